"""Post-copy on the real bed: the container resumes on the device before its memory has arrived; CRIU's page
server at the source serves the rest from the dump, through the migration's ssh channel.

The counter touches N MB and prints a checksum of one byte per page with every count, so a page that arrived
wrong (or as zeros) shows in its own output."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import tempfile
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from androcond.criu.leftovers import extractions
from androcond.engine import Engine

from ..helpers import DaemonProcess, counts, wait_for_count
from ..testbed.agent import DeviceAgent
from ..testbed.bed import RUN_FILTER
from ..testbed.engines import DOCKER_CLI
from ..testbed.proc import run, wait_for
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import (
    Receiver,
    assert_back_at_source,
    continuous,
    faulty_agent,
    finished,
    migrate_by_cli,
    running,
    state_of,
    write_daemon_config,
)
from .test_daemon_faults import injected
from .test_device_restore import start_counter

pytestmark = pytest.mark.testbed

_CHECK = re.compile(r"check (\d+)")


def checks(logs: str) -> set[int]:
    return {int(n) for n in _CHECK.findall(logs)}


def states(daemon: DaemonProcess, name: str) -> list[str]:
    return [e["state"] for e in daemon.lines if e.get("msg") == "migration state" and e.get("container") == name]


def left_on_device(spool: Path) -> list[Path]:
    return [p for p in (spool / "images").glob("*") if p.exists()]


@pytest.mark.parametrize("profile", [None, "android"])
async def test_a_counter_resumes_before_its_memory_arrives(agent_server: AgentBed, engine_a: Engine,
                                                           engine_b: Engine, tmp_path: Path, unique_name: str,
                                                           profile: str | None) -> None:
    """As dumped, and recoded for an Android device (the page server serves the recoded pages)."""
    bed = agent_server.bed
    port = AGENT_PORT + (56 if profile else 50)
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "none", port,
                                              device=f'profile = "{profile}"' if profile else "")
    spool = agent.directory / f"{agent.name}-spool"
    before, pages_dirs = extractions(), page_server_dirs()
    await daemon.start()
    try:
        at_source, source_checks = await counting(engine_a, unique_name, mb=64)
        code, moved_record = await migrate_by_cli(daemon.config, unique_name)
        assert code == 0, moved_record
        end = await finished(daemon, unique_name, timeout=120)
        assert end["state"] == "done", end
        assert states(daemon, unique_name)[-3:] == ["restoring", "paging", "done"]
        await receiver.wait_for(unique_name, "restored")
        assert receiver.kinds_by_subject()[unique_name] == ["requested", "checkpointed", "resumed", "restored"]
        moved = await engine_b.inspect_container(unique_name)
        assert moved["HostConfig"]["Runtime"] == "androcond"
        seen = await wait_for_count(engine_b, unique_name, at_least=at_source[-1] + 5)
        assert seen[0] > at_source[0], "restarted instead of restored"
        # Every page arrived intact: the device's checksums are the source's.
        assert checks(await engine_b.container_logs(unique_name)) == source_checks
        split = next(e for e in daemon.lines if e.get("msg") == "post-copy: pages left to the page server")
        assert split["lazy_bytes"] >= 64 * 2**20  # the touched memory came after the resume, not before it
        timings = moved_record["timings"]
        assert timings["downtime_s"] == timings["resumed_s"] <= timings["last_page_s"]
        assert moved_record["bytes_sent"] >= split["lazy_bytes"]  # the stream's, and the pages served after it
        counted = await metrics(tmp_path / "api.sock", "androcond_migrations_total")
        assert counted["androcond_migration_last_page_seconds_count"] == 1
        assert counted["androcond_migration_downtime_seconds_count"] == 1
        # The engine manages it as usual, and nothing of the move stays behind on either side.
        run([DOCKER_CLI, "-H", bed.engine_b.host, "stop", "-t", "1", unique_name])
        assert not (await engine_b.inspect_container(unique_name))["State"]["Running"]
        assert left_on_device(spool) == []
        assert extractions() - before == set()
        assert page_server_dirs() == pages_dirs
    finally:
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


SECRET = "post-copy-hooks"


async def lazy_move(agent_server: AgentBed, directory: Path, fault: str, port: int,
                    env: dict[str, str] | None = None, device: str = "",
                    ) -> tuple[DeviceAgent, Receiver, DaemonProcess]:
    """An agent (with `fault`), a webhook receiver, and a daemon (not started) moving to it with lazy = true
    (and `device`'s lines in the device's table)."""
    agent = faulty_agent(agent_server, fault, port, directory)
    receiver = Receiver(SECRET)
    url = await receiver.start()
    extra = f'lazy = true\n{device}\n[[webhooks]]\nurl = "{url}"\nsecret = "{SECRET}"'
    return agent, receiver, DaemonProcess(write_daemon_config(agent_server, directory, port=port, extra=extra),
                                          env=env)


def page_server_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("androcond-pages-*"))


async def metrics(api: Path, ended: str) -> dict[str, float]:
    """The daemon's metrics (unlabelled samples), once it counted the migration that just ended."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(api))) as session, \
            asyncio.timeout(30):
        while True:  # a migration is counted just after its final state is logged
            async with session.get("http://androcond/metrics") as response:
                text = await response.text()
            samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
            if any(s.name == ended and s.value >= 1 for s in samples):
                return {s.name: s.value for s in samples if not s.labels}
            await asyncio.sleep(0.1)


async def counting(engine: Engine, name: str, mb: int) -> tuple[list[int], set[int]]:
    """An unlabelled counter, counting at the source (moved by `androcond migrate` afterwards): its counts and
    checksums so far."""
    await start_counter(engine, name, mb=mb, label=False, at_least=3)
    logs = await engine.container_logs(name)
    return counts(logs), checks(logs)


async def test_a_link_cut_while_pages_arrive_rolls_back_to_the_source(agent_server: AgentBed, engine_a: Engine,
                                                                      engine_b: Engine, tmp_path: Path,
                                                                      unique_name: str) -> None:
    """The daemon's error right after the resume closes the connection: the page transfer is cut. The device
    removes its partial container, and the container counts on at the source, once."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "slow-pages", AGENT_PORT + 51,
                                              env=injected("paging", unique_name))
    spool = agent.directory / f"{agent.name}-spool"
    await daemon.start()
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        code, record = await migrate_by_cli(daemon.config, unique_name)
        assert (code, record["state"]) != (0, "done"), record
        end = await finished(daemon, unique_name, timeout=120)
        assert end["state"] == "rolled-back", end
        assert "paging" in states(daemon, unique_name)
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert not await exists(engine_b, unique_name)
        assert left_on_device(spool) == []
        await receiver.wait_for(unique_name, "rolled_back")
        assert receiver.kinds_by_subject()[unique_name] == ["requested", "checkpointed", "resumed", "rolled_back"]
        assert keepers_alive() == []
        # It had resumed on the device, but a move that rolled back has no downtime to report.
        counted = await metrics(tmp_path / "api.sock", "androcond_migrations_total")
        assert counted["androcond_migration_downtime_seconds_count"] == 0
        assert counted["androcond_migration_last_page_seconds_count"] == 0
    finally:
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_the_page_server_killed_while_pages_arrive(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                        tmp_path: Path, unique_name: str) -> None:
    """SIGKILL to the source's page server at `paging`: the device can get no more pages, so the move fails at
    once (not at the paging deadline, an hour) and rolls back: the device's partial container is removed and the
    container runs at the source again, restored from the dump."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "slow-pages", AGENT_PORT + 73)
    spool = agent.directory / f"{agent.name}-spool"
    await daemon.start()
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        move = asyncio.create_task(migrate_by_cli(daemon.config, unique_name))
        await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
        (server,) = processes_with(b"page-server\x00--lazy-pages\x00-D")  # the source's, serving the dump
        os.kill(server, signal.SIGKILL)
        end = await finished(daemon, unique_name, timeout=60)
        assert end["state"] == "rolled-back", end
        assert "the page server ended with status -9" in str(end.get("detail")), end
        await asyncio.gather(move, return_exceptions=True)
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert not await exists(engine_b, unique_name)
        assert left_on_device(spool) == []
        assert keepers_alive() == []
    finally:
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_the_agent_killed_while_pages_arrive(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                   tmp_path: Path, unique_name: str) -> None:
    """SIGKILL to the agent mid-transfer: its page keeper holds lazy-pages' socket, so the device's container
    waits for its missing pages instead of reading zeros; the restarted agent removes it, and the daemon rolls
    back to the source."""
    bed = agent_server.bed
    agent = faulty_agent(agent_server, "slow-pages", AGENT_PORT + 52, tmp_path)
    spool = agent.directory / f"{agent.name}-spool"
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, port=agent.port, extra="lazy = true"))
    await daemon.start()
    try:
        before = extractions()
        at_source, source_checks = await counting(engine_a, unique_name, mb=64)
        move = asyncio.create_task(migrate_by_cli(daemon.config, unique_name))
        await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
        agent.kill()
        # While no agent runs, the device's container never uses memory that did not arrive: it waits for its
        # pages. Watched for a second (ten of its ticks). Without the keeper, lazy-pages exits, the missing
        # pages read as zeros and this counter crashed (checked by switching the keeper's hold off).
        await watch_checks(engine_b, unique_name, source_checks, seconds=1.0)
        agent.start()
        end = await finished(daemon, unique_name, timeout=120)
        assert end["state"] == "rolled-back", end
        assert (await move)[1]["state"] == "rolled-back"
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert not await exists(engine_b, unique_name)
        assert not await running(engine_b, unique_name)
        assert left_on_device(spool) == []
        assert keepers_alive() == []
        # containerd's copy of the stub the cut restore read: the restarted agent's settling removed it.
        assert extractions() - before == set()
    finally:
        await daemon.kill()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_the_daemon_killed_while_pages_arrive(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                    tmp_path: Path, unique_name: str) -> None:
    """SIGKILL to the daemon mid-transfer: its page server loses its relay and the link drops, the agent
    removes its partial container, and the restarted daemon asks the device and rolls back to the source."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "slow-pages", AGENT_PORT + 55)
    spool = agent.directory / f"{agent.name}-spool"
    pages_dirs = page_server_dirs()
    await daemon.start()
    again = DaemonProcess(daemon.config)
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        move = asyncio.create_task(migrate_by_cli(daemon.config, unique_name))
        await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
        await daemon.kill()  # no cleanup of any kind
        await asyncio.gather(move, return_exceptions=True)  # the client lost its daemon
        left = list((tmp_path / "state" / "lazy").glob("*/androcond-pages-*"))
        assert left, "the killed daemon's page server worked in the migration's workspace"
        await again.start()
        end = await finished(again, unique_name, timeout=120)
        assert end["state"] == "rolled-back", end
        # Settled: the restarted daemon removes what the killed one kept for the migration.
        wait_for(lambda: not any(path.exists() for path in left), timeout=30, what="the workspace removed")
        assert page_server_dirs() == pages_dirs, "nothing in the system's temporary directory"
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert not await exists(engine_b, unique_name)
        assert left_on_device(spool) == []
        assert keepers_alive() == []
        assert page_servers_alive() == []
    finally:
        await again.kill()
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def watch_checks(engine: Engine, name: str, allowed: set[int], seconds: float) -> None:
    """Fail as soon as the container stops or prints a checksum the source never printed, during `seconds`."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while loop.time() < until:
        assert await running(engine, name), "the device's container stopped (its missing pages read as zeros?)"
        shown = checks(await engine.container_logs(name))
        assert shown <= allowed, f"the device's container read memory that never arrived: {shown - allowed}"
        await asyncio.sleep(0.1)


async def exists(engine: Engine, name: str) -> bool:
    return any(name in (c.get("Names") or [""])[0] for c in await engine.list_containers(all_states=True))


def page_servers_alive() -> list[int]:
    return processes_with(b"page-server")


def keepers_alive() -> list[int]:
    return processes_with(b"androcond.agent.page_keeper", b"lazy-pages")


def processes_with(*needles: bytes) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if any(needle in cmdline for needle in needles):
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize(("lazy", "ends"), [("true", "rejected"), ('"auto"', "done")])
async def test_a_device_without_the_runtime(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                            tmp_path: Path, unique_name: str, lazy: str, ends: str) -> None:
    """No androcond runtime on the device engine, so no lazy restore: `lazy = true` refuses the move before
    anything is frozen (and says why), `lazy = "auto"` moves it the plain way."""
    bed = agent_server.bed
    agent = faulty_agent(agent_server, "no-runtime", AGENT_PORT + (53 if ends == "done" else 54), tmp_path)
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, port=agent.port, extra=f"lazy = {lazy}"))
    await daemon.start()
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=16)
        await migrate_by_cli(daemon.config, unique_name)
        end = await finished(daemon, unique_name, timeout=120)
        assert end["state"] == ends, end
        assert "paging" not in states(daemon, unique_name)
        if ends == "rejected":
            assert "cannot restore lazily" in end["detail"]
            assert "checkpointing" not in states(daemon, unique_name), "frozen although the move was refused"
            assert continuous(await wait_for_count(engine_a, unique_name, at_least=at_source[-1] + 3))
        else:
            seen = await wait_for_count(engine_b, unique_name, at_least=at_source[-1] + 3)
            assert seen[0] > 1, "restarted instead of restored"
    finally:
        await daemon.kill()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)
