"""The daemon survives whatever a migration throws (real bed): an unexpected exception in every phase, an
engine that answers `null`, a hung agent, a dying `docker load`, an adb forward gone after the restore, an
agent killed during its restore. Each ends with the container running exactly once, the daemon still
running and moving other containers, and the journal telling the truth; a second daemon on the same engine
is refused."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine
from androcond.faults import ENV

from ..helpers import DaemonProcess, counter_config, start_counting, wait_for_count
from ..testbed.agent import DeviceAgent
from ..testbed.bed import RUN_FILTER
from ..testbed.images import TEST_IMAGE
from ..testbed.proc import wait_for
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import (
    Receiver,
    assert_back_at_source,
    continuous,
    counting_on,
    faulty_agent,
    finished,
    running,
    state_of,
    write_daemon_config,
)
from .engine_proxy import NullStatsProxy

pytestmark = pytest.mark.testbed

SECRET = f"hook-secret-{os.getpid()}"


def injected(point: str, container: str) -> dict[str, str]:
    return {**os.environ, ENV: f"{point}@{container}"}


def labelled_counter(mb: int = 0, image: str = TEST_IMAGE) -> dict[str, Any]:
    config = counter_config(**{"androcond.migrate": "pixel"})
    config["Image"] = image
    if mb:
        config["Cmd"] = ["/bin/counter", str(mb)]
    return config


async def start_counter(engine: Engine, name: str, mb: int = 0, image: str = TEST_IMAGE) -> int:
    """Labelled, started and counting; the last count seen. Started before the daemon, which moves it from its
    startup scan: a daemon already running would freeze it at once, maybe before its first count."""
    return await start_counting(engine, labelled_counter(mb, image), name)


def journal(directory: Path, name: str) -> dict[str, Any]:
    """The migration's row and its transitions, read from the daemon's own journal file."""
    db = sqlite3.connect(directory / "state" / "journal.sqlite3")
    db.row_factory = sqlite3.Row
    try:
        row = db.execute("SELECT * FROM migrations WHERE container_name = ? ORDER BY created_at DESC LIMIT 1",
                         (name,)).fetchone()
        assert row is not None, f"no migration of {name} in the journal"
        states = [r["state"] for r in db.execute("SELECT state FROM transitions WHERE migration_id = ? "
                                                  "ORDER BY rowid", (row["id"],))]
        return {**dict(row), "states": states}
    finally:
        db.close()


async def another_moves(daemon: DaemonProcess, engine_a: Engine, engine_b: Engine, name: str) -> None:
    """The daemon is alive and still serves migrations."""
    assert daemon.proc is not None and daemon.proc.returncode is None
    # Through the start event; it may well be gone from here before its first count (none is compared).
    await engine_a.start_container(await engine_a.create_container(labelled_counter(), name=name))
    assert (await finished(daemon, name))["state"] == "done"
    assert await running(engine_b, name)


OUTCOME = {"preflight": "failed", "checkpoint": "rolled-back", "recode": "rolled-back", "stream": "rolled-back",
           "commit": "rolled-back", "finish-source": "done"}
# The webhook events each migration announces (streaming is announced as "checkpointed").
EVENTS = {"preflight": ["requested", "failed"], "checkpoint": ["requested", "rolled_back"],
          "recode": ["requested", "checkpointed", "rolled_back"],
          "stream": ["requested", "checkpointed", "rolled_back"],
          "commit": ["requested", "checkpointed", "rolled_back"],
          "finish-source": ["requested", "checkpointed", "restored"]}


@pytest.mark.parametrize("point", list(OUTCOME))
async def test_an_unexpected_exception_in_any_phase_is_contained(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        point: str) -> None:
    receiver = Receiver(SECRET)
    hooks = f'[[webhooks]]\nurl = "{await receiver.start()}"\nsecret = "{SECRET}"'
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, extra=hooks),
                           env=injected(point, unique_name))
    try:
        counted = await start_counter(engine_a, unique_name)
        await daemon.start()
        end = await finished(daemon, unique_name)
        assert end["state"] == OUTCOME[point], end
        record = journal(tmp_path, unique_name)
        assert record["state"] == OUTCOME[point]
        if point == "finish-source":
            # It runs on the device: that the stopped source could not be removed is said, not a failure.
            assert await running(engine_b, unique_name)
            source = await engine_a.inspect_container(unique_name)
            assert not source["State"]["Running"]
            assert "source container was not removed" in record["error"]
            assert "InjectedFault" in record["error"]
        else:
            assert "internal error" in record["error"] and "InjectedFault" in record["error"]
            # The traceback is in the log, once, with the phase it came from.
            logged = [e for e in daemon.lines if e.get("msg") == "migration hit an unexpected error"]
            assert len(logged) == 1 and logged[0]["exception"][0]["exc_type"] == "InjectedFault"
            await assert_back_at_source(engine_a, engine_b, unique_name, counted)
            if point == "preflight":
                assert "checkpointing" not in record["states"], "frozen although preflight failed"
            else:
                assert record["states"][-2:] == ["rolling-back", "rolled-back"]
        # The webhooks tell the same story: no "failed" for a container that runs on the device.
        await receiver.wait_for(unique_name, EVENTS[point][-1])
        assert receiver.kinds_by_subject()[unique_name] == EVENTS[point]
        await another_moves(daemon, engine_a, engine_b, f"{unique_name}-next")
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
        await receiver.stop()


async def test_engine_stats_answering_null(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                           tmp_path: Path, unique_name: str) -> None:
    """What a second daemon saw: the engine's stats said `null`. The estimate goes on without the memory
    figure and the container moves."""
    bed = agent_server.bed
    proxy = await NullStatsProxy(Path(bed.engine_a.host.removeprefix("unix://")), tmp_path / "proxy.sock").start()
    config = write_daemon_config(agent_server, tmp_path)
    config.write_text(config.read_text().replace(f'host = "{bed.engine_a.host}"', f'host = "{proxy.host}"'))
    daemon = DaemonProcess(config)
    try:
        counted = await start_counter(engine_a, unique_name)
        await daemon.start()
        end = await finished(daemon, unique_name)
        assert end["state"] == "done", end
        assert proxy.stats_answered >= 1
        assert any(e.get("msg") == "no memory figure from the engine; estimating without it" for e in daemon.lines)
        seen = await wait_for_count(engine_b, unique_name, at_least=counted + 3)
        assert seen[0] > counted, "restarted: the memory state did not move"
        assert continuous(seen)
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
        await proxy.close()


async def test_a_hung_agent_rolls_back_within_the_idle_timeout(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """sshd-level keepalives still work when the agent process is stopped (SIGSTOP): only the absence of
    progress can tell, and it must."""
    idle = 3.0
    agent = faulty_agent(agent_server, "none", AGENT_PORT + 11, tmp_path)
    config = write_daemon_config(agent_server, tmp_path, port=agent.port,
                                 extra=f"[timeouts]\nstream_idle = {idle}\nsettle = 5")
    daemon = DaemonProcess(config)
    assert agent.proc is not None
    try:
        counted = await start_counter(engine_a, unique_name, mb=192)
        await daemon.start()
        await daemon.wait_for_log(state_of(unique_name, "streaming"), timeout=60)
        os.kill(agent.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        end = await finished(daemon, unique_name, timeout=60)
        took = time.monotonic() - stopped_at
        assert end["state"] == "rolled-back", end
        assert "no progress" in end["detail"] or "timed out" in end["detail"], end
        assert took < idle + 20, f"rolled back {took:.1f}s after the agent hung (idle timeout {idle}s)"
        await assert_back_at_source(engine_a, engine_b, unique_name, counted)
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            os.kill(agent.proc.pid, signal.SIGCONT)
        await daemon.kill()
        agent.stop()


async def test_docker_load_dying_mid_image(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                          tmp_path: Path, unique_name: str) -> None:
    """The device lacks the image, and its `docker load` dies after two chunks: the agent must not wait
    forever on its full queue; the daemon is told, nothing was frozen, the container runs on."""
    bed = agent_server.bed
    image = f"androcond-test/only-on-host:{unique_name}"
    bed.engine_a.cli("tag", TEST_IMAGE, image)
    agent = faulty_agent(agent_server, "load-dies", AGENT_PORT + 12, tmp_path)
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, port=agent.port))
    try:
        counted = await start_counter(engine_a, unique_name, image=image)
        await daemon.start()
        end = await finished(daemon, unique_name, timeout=60)
        assert end["state"] == "rejected", end
        assert "image" in end["detail"], end
        record = journal(tmp_path, unique_name)
        assert "checkpointing" not in record["states"]
        seen = await counting_on(engine_a, unique_name, counted, more=2)
        assert counted in seen and continuous(seen)
        assert not await running(engine_b, unique_name)
        await another_moves(daemon, engine_a, engine_b, f"{unique_name}-next")
    finally:
        await daemon.kill()
        agent.stop()
        bed.engine_a.cli("rmi", "-f", image, check=False)
        bed.engine_b.cli("rmi", "-f", image, check=False)


async def test_adb_forward_gone_after_done_stays_done(agent_server: AgentBed, engine_a: Engine,
                                                      engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """The phone unplugged right after the restore: removing the forward fails, the migration stays done
    (the container runs on the device and the source is gone)."""
    bed = agent_server.bed
    public = agent_server.host_key.export_public_key().decode().strip()
    known = tmp_path / "known_hosts-adb"
    known.write_text(f"{bed.adb_serial} {public}\n")
    config = write_daemon_config(agent_server, tmp_path)
    text = config.read_text().replace(f'address = "{bed.device.device_ip}:{AGENT_PORT}"',
                                      f'adb_serial = "{bed.adb_serial}"\nagent_port = {AGENT_PORT}')
    text = "\n".join(f'known_hosts = "{known}"' if line.startswith("known_hosts =") else line
                     for line in text.splitlines())
    config.write_text(text)
    daemon = DaemonProcess(config, env={**os.environ, ENV: "forward-gone"})
    try:
        await start_counter(engine_a, unique_name)
        await daemon.start()
        end = await finished(daemon, unique_name)
        assert end["state"] == "done", end
        warning = await daemon.wait_for_log(lambda e: e.get("msg") == "could not remove the adb forward")
        assert warning["adb_serial"] == bed.adb_serial
        assert journal(tmp_path, unique_name)["state"] == "done"
        assert await running(engine_b, unique_name)
        assert not await running(engine_a, unique_name)
        assert not any(e.get("state") in ("failed", "rolling-back") for e in daemon.lines
                       if e.get("container") == unique_name)
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()


async def test_agent_killed_during_its_restore_is_settled_without_a_daemon_restart(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    bed = agent_server.bed
    port = AGENT_PORT + 13
    agent = faulty_agent(agent_server, "hold-restore", port, tmp_path)
    config = write_daemon_config(agent_server, tmp_path, port=port,
                                 extra="[timeouts]\nsettle = 5\nconnect = 5\nresolve_backoff_max = 2")
    daemon = DaemonProcess(config)
    try:
        counted = await start_counter(engine_a, unique_name)
        await daemon.start()
        await daemon.wait_for_log(state_of(unique_name, "restoring"), timeout=60)
        outcomes = agent.directory / f"{agent.name}-spool" / "outcomes"
        await asyncio.to_thread(wait_for, lambda: any('"restoring"' in p.read_text()
                                                      for p in outcomes.glob("*.json")),
                                timeout=30, what="the agent to hold its restore")
        agent.kill()  # SIGKILL, its outcome file says "restoring"
        await daemon.wait_for_log(lambda e: e.get("msg") == "migration unresolved; will ask the device again"
                                  and e.get("container") == unique_name, timeout=60)
        assert not await running(engine_a, unique_name), "restored at the source on a guess"
        # The same agent (spool, port, host key) comes back: it settles its stale outcome at start, and the
        # running daemon's resolver asks it again on its own.
        again = DeviceAgent(bed, agent.directory, port, module=("tests.agent.faulty_agent", "none"),
                            name=agent.name, host_key=agent.host_key_path).start()
        try:
            end = await finished(daemon, unique_name, timeout=90)
            assert end["state"] == "rolled-back", end
            assert daemon.proc is not None and daemon.proc.returncode is None
            await assert_back_at_source(engine_a, engine_b, unique_name, counted)
            assert journal(tmp_path, unique_name)["states"][-3:] == ["restoring", "rolling-back", "rolled-back"]
        finally:
            again.stop()
    finally:
        await daemon.kill()
        agent.stop()


async def test_a_device_whose_address_space_is_too_small_is_refused_before_the_freeze(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    agent = faulty_agent(agent_server, "small-va", AGENT_PORT + 14, tmp_path)
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, port=agent.port))
    try:
        counted = await start_counter(engine_a, unique_name)
        await daemon.start()
        end = await finished(daemon, unique_name)
        assert end["state"] == "rejected", end
        assert "47-bit addresses" in end["detail"] and "gives a process 39 bits" in end["detail"], end
        assert "checkpointing" not in journal(tmp_path, unique_name)["states"]
        seen = await counting_on(engine_a, unique_name, counted)
        assert counted in seen and continuous(seen)
        assert not await running(engine_b, unique_name)
    finally:
        await daemon.kill()
        agent.stop()


async def test_a_second_daemon_on_the_same_engine_is_refused(agent_server: AgentBed, tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = DaemonProcess(write_daemon_config(agent_server, tmp_path / "one"))
    await first.start()
    try:
        await first.wait_for_log(lambda e: e.get("msg") == "ready")
        second_config = write_daemon_config(agent_server, tmp_path / "two")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "androcond", "run", "--config", str(second_config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(30):
            _out, err = await proc.communicate()
        assert proc.returncode == 2, err.decode()
        assert first.proc is not None
        message = err.decode()
        assert "already follows the Docker engine" in message and f"pid {first.proc.pid}" in message
        assert first.proc.returncode is None  # the first one is untouched
        assert await first.stop() == 0
    finally:
        await first.kill()
    # Once the first one is gone, a new one starts (the lock died with it).
    again = DaemonProcess(write_daemon_config(agent_server, tmp_path / "two"))
    await again.start()
    try:
        await again.wait_for_log(lambda e: e.get("msg") == "ready")
    finally:
        await again.kill()


@pytest.fixture(autouse=True)
def _cleanup(agent_server: AgentBed) -> Any:
    yield
    agent_server.bed.engine_a.remove_containers(RUN_FILTER)
    agent_server.bed.engine_b.remove_containers(RUN_FILTER)

