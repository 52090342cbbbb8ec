"""The flat freeze on the real bed (`freeze = "flat"` with post-copy): the source dumps all but the memory, and
the paused tasks serve their pages to the device (criu/lazy_dump.py). Exactly once rests on CRIU's end of the
page transfer: only the daemon's confirmation ends the dump (and the source's tasks); every other end leaves
them frozen until the device's word, then the rollback unpauses them — the same process, counting on."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from androcond.engine import Engine

from ..helpers import DaemonProcess, counts, wait_for_count
from ..testbed.bed import RUN_FILTER
from ..testbed.engines import DOCKER_CLI
from ..testbed.proc import wait_for
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import assert_back_at_source, finished, migrate_by_cli, state_of
from .test_daemon_faults import injected
from .test_post_copy import checks, counting, exists, keepers_alive, lazy_move, left_on_device, processes_with, states

pytestmark = pytest.mark.testbed

FLAT = 'freeze = "flat"'


def lazy_dumps_alive() -> list[int]:
    return processes_with(b"--lazy-pages\x00--page-server")


async def started_at(engine: Engine, name: str) -> str:
    return str((await engine.inspect_container(name))["State"]["StartedAt"])


async def test_the_memory_is_served_from_the_frozen_tasks(agent_server: AgentBed, engine_a: Engine,
                                                          engine_b: Engine, tmp_path: Path,
                                                          unique_name: str) -> None:
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "none", AGENT_PORT + 60, device=FLAT)
    spool = agent.directory / f"{agent.name}-spool"
    await daemon.start()
    try:
        at_source, source_checks = await counting(engine_a, unique_name, mb=64)
        code, record = await migrate_by_cli(daemon.config, unique_name)
        assert code == 0, record
        end = await finished(daemon, unique_name, timeout=120)
        assert end["state"] == "done", end
        assert states(daemon, unique_name)[-3:] == ["restoring", "paging", "done"]
        ready = next(e for e in daemon.lines if e.get("msg", "").startswith("lazy dump ready"))
        assert ready["port"] > 0
        # No memory was dumped: every touched page went after the resume, from the tasks.
        split = next(e for e in daemon.lines if e.get("msg") == "post-copy: pages left to the page server")
        assert split["lazy_bytes"] < 2**20, split
        assert record["bytes_sent"] >= 64 * 2**20
        # The counter's memory compresses (a multiplicative hash of the index): its pages went compressed, and
        # arrived as they were (the checksums below are over every page).
        assert record["wire_bytes"] < record["bytes_sent"] / 4, record
        seen = await wait_for_count(engine_b, unique_name, at_least=at_source[-1] + 5)
        assert seen[0] > at_source[0], "restarted instead of restored"
        assert checks(await engine_b.container_logs(unique_name)) == source_checks
        timings = record["timings"]
        assert timings["downtime_s"] == timings["resumed_s"] <= timings["last_page_s"]
        # Confirmed: the dump ended well and took the source's tasks with it; the source container is removed.
        assert any(e.get("msg", "").startswith("the lazy dump ended: ") for e in daemon.lines)
        assert not any("did not end cleanly" in e.get("msg", "") for e in daemon.lines)
        assert not await exists(engine_a, unique_name)
        assert lazy_dumps_alive() == []
        assert keepers_alive() == []
        assert left_on_device(spool) == []
    finally:
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_a_link_cut_while_pages_arrive_unpauses_the_source(agent_server: AgentBed, engine_a: Engine,
                                                                 engine_b: Engine, tmp_path: Path,
                                                                 unique_name: str) -> None:
    """The connection to the device dies at `paging`: the dump's connection is reset, its tasks go back to
    frozen, the device removes its copy, and then the source is unpaused — the same process (never restarted or
    restored: its start time is the one it had), counting on from where it was."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "slow-pages", AGENT_PORT + 61,
                                              env=injected("paging", unique_name), device=FLAT)
    spool = agent.directory / f"{agent.name}-spool"
    await daemon.start()
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        began = await started_at(engine_a, unique_name)
        code, record = await migrate_by_cli(daemon.config, unique_name)
        assert (code, record["state"]) != (0, "done"), record
        end = await finished(daemon, unique_name, timeout=120)
        assert end["state"] == "rolled-back", end
        assert "paging" in states(daemon, unique_name)
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert await started_at(engine_a, unique_name) == began, "restored from a checkpoint, not unpaused"
        assert not (await engine_a.inspect_container(unique_name))["State"]["Paused"]
        assert not await exists(engine_b, unique_name)
        assert left_on_device(spool) == []
        assert lazy_dumps_alive() == []
        assert keepers_alive() == []
    finally:
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


@pytest.mark.parametrize("dump_too", [False, True], ids=["the-daemon", "the-daemon-and-its-lazy-dump"])
async def test_the_daemon_killed_while_pages_arrive(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                    tmp_path: Path, unique_name: str, dump_too: bool) -> None:
    """SIGKILL to the daemon at `paging`: its socket to the dump resets as the process dies (SO_LINGER 0), so
    the dump fails and its tasks go back to frozen, not running; the restarted daemon asks the device and
    unpauses them. `dump_too`: the lazy dump's runc and CRIU are SIGKILLed with it, as systemd does to what is
    left of a crashed daemon's unit (`KillMode=mixed`): whoever dies first, the freezer's hold keeps the tasks
    still."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "slow-pages", AGENT_PORT + 62, device=FLAT)
    spool = agent.directory / f"{agent.name}-spool"
    await daemon.start()
    again = DaemonProcess(daemon.config)
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        began = await started_at(engine_a, unique_name)
        move = asyncio.create_task(migrate_by_cli(daemon.config, unique_name))
        await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
        if dump_too:
            (dump,) = lazy_dumps_alive()
            os.killpg(dump, signal.SIGKILL)  # runc and the CRIU it started: one process group
        await daemon.kill()
        await asyncio.gather(move, return_exceptions=True)
        # Until the device's word, nothing runs the container at the source: its tasks are frozen.
        before = counts(await engine_a.container_logs(unique_name))
        await asyncio.sleep(1.0)  # what is watched is that nothing happens: ten of the counter's ticks
        assert counts(await engine_a.container_logs(unique_name)) == before, "the source ran before the word"
        assert (await engine_a.inspect_container(unique_name))["State"]["Paused"]
        await again.start()
        end = await finished(again, unique_name, timeout=120)
        assert end["state"] == "rolled-back", end
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert await started_at(engine_a, unique_name) == began
        assert not await exists(engine_b, unique_name)
        assert left_on_device(spool) == []
        assert lazy_dumps_alive() == []
    finally:
        await again.kill()
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_the_agent_killed_while_pages_arrive(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                   tmp_path: Path, unique_name: str) -> None:
    """SIGKILL to the agent at `paging`: the source's tasks stay frozen while no one can say what the device
    runs; the restarted agent removes its partial container, and the daemon then unpauses the source."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "slow-pages", AGENT_PORT + 63, device=FLAT)
    spool = agent.directory / f"{agent.name}-spool"
    await daemon.start()
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        began = await started_at(engine_a, unique_name)
        move = asyncio.create_task(migrate_by_cli(daemon.config, unique_name))
        await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
        agent.kill()
        before = counts(await engine_a.container_logs(unique_name))
        await asyncio.sleep(1.0)  # what is watched is that nothing happens: ten of the counter's ticks
        assert counts(await engine_a.container_logs(unique_name)) == before, "the source ran without the word"
        agent.start()
        end = await finished(daemon, unique_name, timeout=120)
        assert end["state"] == "rolled-back", end
        assert (await move)[1]["state"] == "rolled-back"
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert await started_at(engine_a, unique_name) == began
        assert not await exists(engine_b, unique_name)
        assert left_on_device(spool) == []
        assert lazy_dumps_alive() == []
        assert keepers_alive() == []
    finally:
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


@pytest.mark.parametrize("phase", ["checkpoint", "stream", "commit"])
async def test_a_fault_before_the_resume_unpauses_the_source(agent_server: AgentBed, engine_a: Engine,
                                                             engine_b: Engine, tmp_path: Path, unique_name: str,
                                                             phase: str) -> None:
    """The daemon's error after the lazy dump and before the device resumed anything: the dump's connection is
    reset, the device discards its container (and the page keeper it spawned with it, lazy-pages never
    started), and the source is unpaused."""
    bed = agent_server.bed
    port = AGENT_PORT + 64 + ["checkpoint", "stream", "commit"].index(phase)
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "none", port, env=injected(phase, unique_name),
                                              device=FLAT)
    spool = agent.directory / f"{agent.name}-spool"
    await daemon.start()
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        began = await started_at(engine_a, unique_name)
        await migrate_by_cli(daemon.config, unique_name)
        end = await finished(daemon, unique_name, timeout=120)
        assert end["state"] == "rolled-back", end
        assert "paging" not in states(daemon, unique_name)
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert await started_at(engine_a, unique_name) == began
        assert not await exists(engine_b, unique_name)
        assert left_on_device(spool) == []
        wait_for(lambda: keepers_alive() == [], timeout=30, what="the spawned page keeper gone")
        assert lazy_dumps_alive() == []
    finally:
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_the_daemon_stopped_while_pages_arrive(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                     tmp_path: Path, unique_name: str) -> None:
    """SIGTERM at `paging` (a graceful stop, as systemd's): the daemon ends the dump's transfer, the device
    removes its copy, and before it exits the daemon has the source unpaused and the move rolled back."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "slow-pages", AGENT_PORT + 67, device=FLAT)
    spool = agent.directory / f"{agent.name}-spool"
    await daemon.start()
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        began = await started_at(engine_a, unique_name)
        move = asyncio.create_task(migrate_by_cli(daemon.config, unique_name))
        await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
        assert await daemon.stop(timeout=30) == 0
        await asyncio.gather(move, return_exceptions=True)
        end = next(e for e in reversed(daemon.lines)
                   if e.get("msg") == "migration state" and e.get("container") == unique_name)
        assert end["state"] == "rolled-back", end
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert await started_at(engine_a, unique_name) == began
        assert not await exists(engine_b, unique_name)
        assert left_on_device(spool) == []
        assert lazy_dumps_alive() == []
    finally:
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_the_daemon_killed_while_it_freezes_flat(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                       tmp_path: Path, unique_name: str) -> None:
    """SIGKILL to the daemon as the flat freeze begins (the pause, the lazy dump starting): the checkpoint is
    marked before the pause, so the restarted daemon knows the pause is its own to undo — the same process
    counts on, never left paused."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "none", AGENT_PORT + 69, device=FLAT)
    await daemon.start()
    again = DaemonProcess(daemon.config)
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        began = await started_at(engine_a, unique_name)
        move = asyncio.create_task(migrate_by_cli(daemon.config, unique_name))
        await daemon.wait_for_log(state_of(unique_name, "checkpointing"), timeout=120)
        await daemon.kill()
        await asyncio.gather(move, return_exceptions=True)
        await again.start()
        end = await finished(again, unique_name, timeout=120)
        assert end["state"] == "rolled-back", end
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert await started_at(engine_a, unique_name) == began
        assert not (await engine_a.inspect_container(unique_name))["State"]["Paused"]
        assert not await exists(engine_b, unique_name)
        wait_for(lambda: lazy_dumps_alive() == [], timeout=30, what="no lazy dump left holding the tasks")
    finally:
        await again.kill()
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_criu_killed_while_pages_arrive_leaves_the_tasks_frozen(agent_server: AgentBed, engine_a: Engine,
                                                                      engine_b: Engine, tmp_path: Path,
                                                                      unique_name: str) -> None:
    """SIGKILL to the lazy dump's runc and CRIU at `paging`, as the OOM killer or systemd's SIGKILL to what is
    left of a dead daemon's unit would. CRIU thawed the freezer once it had seized the tasks, so they would run
    at once while the device's copy does; the hold keeps them frozen until the rollback has heard from the
    device. The page server's end fails the move at once (not at the paging deadline), and the same process
    counts on at the source."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "slow-pages", AGENT_PORT + 71, device=FLAT)
    spool = agent.directory / f"{agent.name}-spool"
    await daemon.start()
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        began = await started_at(engine_a, unique_name)
        move = asyncio.create_task(migrate_by_cli(daemon.config, unique_name))
        await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
        (dump,) = lazy_dumps_alive()
        killed = time.time()
        os.killpg(dump, signal.SIGKILL)  # runc and the CRIU it started: one process group
        end = await finished(daemon, unique_name, timeout=60)
        assert end["state"] == "rolled-back", end
        assert "the page server stopped answering" in str(end.get("detail")), end
        await asyncio.gather(move, return_exceptions=True)
        await assert_back_at_source(engine_a, engine_b, unique_name, at_source[-1])
        assert_still_until_settled(daemon, bed.engine_a.cli("logs", "-t", unique_name), killed)
        assert await started_at(engine_a, unique_name) == began, "restored from a checkpoint, not unpaused"
        assert not await exists(engine_b, unique_name)
        assert left_on_device(spool) == []
        assert lazy_dumps_alive() == []
    finally:
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_criu_killed_at_the_confirmed_end_lets_no_task_run(agent_server: AgentBed, engine_a: Engine,
                                                                 engine_b: Engine, tmp_path: Path,
                                                                 unique_name: str) -> None:
    """SIGKILL to the lazy dump's runc and CRIU at its confirmed end, after the freezer's thaw and before the CLOSE
    on which CRIU would kill the tasks (fault `dump-end`). The device has every page: the move is done, and the
    source's tasks, killed while still frozen, never print a count the device's copy prints too."""
    bed = agent_server.bed
    agent, receiver, daemon = await lazy_move(agent_server, tmp_path, "none", AGENT_PORT + 72,
                                              env=injected("dump-end", unique_name), device=FLAT)
    await daemon.start()
    follower: asyncio.subprocess.Process | None = None
    try:
        at_source, _checks = await counting(engine_a, unique_name, mb=64)
        # Everything the source prints until its container is removed, even after the move ended.
        follower = await asyncio.create_subprocess_exec(
            DOCKER_CLI, "-H", bed.engine_a.host, "logs", "-f", unique_name,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        code, record = await migrate_by_cli(daemon.config, unique_name)
        assert (code, record["state"]) == (0, "done"), record
        assert any(e.get("msg", "").startswith("the lazy dump did not end cleanly") and "before its answer to the "
                   "CLOSE" in e.get("error", "") for e in daemon.lines), "the fault did not strike"
        on_device = await wait_for_count(engine_b, unique_name, at_least=at_source[-1] + 5)
        assert not await exists(engine_a, unique_name)
        async with asyncio.timeout(30):
            printed, _ = await follower.communicate()  # its container removed, the follower ends
        at_source = counts(printed.decode(errors="replace"))
        assert at_source and max(at_source) < on_device[0], \
            f"the source counted to {max(at_source)} while the device counts from {on_device[0]}"
        assert lazy_dumps_alive() == []
    finally:
        if follower is not None and follower.returncode is None:
            follower.kill()
            await follower.wait()
        await daemon.kill()
        await receiver.stop()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


def assert_still_until_settled(daemon: DaemonProcess, stamped_logs: str, killed: float) -> None:
    """Not one count between CRIU's death (`killed`, epoch seconds) and the daemon's settling, which follows the
    target's answer that its copy is gone. `stamped_logs`: the container's `docker logs -t`."""
    settling = next(e for e in daemon.lines if e.get("msg") == "settling")
    assert settling["device_says"] != "running", settling
    settled = datetime.fromisoformat(settling["timestamp"]).timestamp()
    told = [stamp for stamp, line in _stamped(stamped_logs) if "count" in line]
    first = min(stamp for stamp in told if stamp > killed)
    assert first >= settled, f"counted {first - killed:.3f} s after CRIU died, {settled - first:.3f} s before the " \
                             "target's answer"


def _stamped(logs: str) -> list[tuple[float, str]]:
    """`docker logs -t` lines as (epoch seconds, text); the engine's stamps have nanoseconds, Python's take
    microseconds."""
    out = []
    for line in logs.splitlines():
        stamp, _, text = line.partition(" ")
        whole, _, fraction = stamp.rstrip("Z").partition(".")
        out.append((datetime.fromisoformat(f"{whole}.{fraction[:6].ljust(6, '0')}+00:00").timestamp(), text))
    return out
