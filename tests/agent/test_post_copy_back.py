"""Post-copy back on the real bed: a container on the namespace device comes home with `freeze = "flat"` in the
device's table. The device's agent pauses it and dumps all but its memory; the host restores it in its own engine
and resumes it at once, while the paused tasks on the device serve its pages over the same link (relayed by the
daemon). Exactly once as on the way out: only the host's word that it runs with every page ends the device's
dump; every other end leaves the device's tasks paused until the rollback unpauses them — the same process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from androcond.criu.leftovers import extractions
from androcond.engine import Engine

from ..helpers import DaemonProcess, counts
from ..testbed.proc import wait_for
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import (
    continuous,
    counting_on,
    faulty_agent,
    finished,
    migrate_by_cli,
    running,
    state_of,
    write_daemon_config,
)
from .test_daemon_faults import injected
from .test_flat_freeze import assert_still_until_settled, lazy_dumps_alive, started_at
from .test_post_copy import checks, counting, exists, keepers_alive, states

pytestmark = pytest.mark.testbed

BACK = 'lazy = true\nfreeze = "flat"'
MB = 64


async def _out(agent: AgentBed, engine_a: Engine, engine_b: Engine, directory: Path, name: str,
               port: int = AGENT_PORT) -> tuple[Path, int, set[int]]:
    """Out to the device (a daemon of its own, gone after), through the agent on `port`; the count it reached
    there and its memory's checksums as the host saw them."""
    config = write_daemon_config(agent, directory, port=port, extra=BACK)
    daemon = await _ready(DaemonProcess(config))
    try:
        at_home, home_checks = await counting(engine_a, name, mb=MB)
        code, record = await migrate_by_cli(config, name)
        assert code == 0 and record["state"] == "done", record
    finally:
        await daemon.kill()
    seen = await counting_on(engine_b, name, at_home[-1])
    return config, seen[-1], home_checks


async def _ready(daemon: DaemonProcess) -> DaemonProcess:
    await daemon.start()
    await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
    return daemon


def _dump_ended_well(daemon: DaemonProcess) -> bool:
    return any(e.get("msg", "").startswith("the device's lazy dump ended") for e in daemon.lines)


async def _held_paused(engine_b: Engine, name: str) -> None:
    """The device's dump is reset and its tasks are paused: nothing runs the container until the daemon's word."""
    wait_for(lambda: lazy_dumps_alive() == [], timeout=30, what="the device's dump reset")
    before = counts(await engine_b.container_logs(name))
    await asyncio.sleep(1.0)  # what is watched is that nothing happens: ten of the counter's ticks
    assert counts(await engine_b.container_logs(name)) == before, "the device ran before the word"
    assert (await engine_b.inspect_container(name))["State"]["Paused"]


async def _back_on_the_device(engine_a: Engine, engine_b: Engine, name: str, on_device: int, began: str) -> None:
    """Rolled back: the device's same process (its start time unchanged: unpaused, not restored), counting on
    from where it was; no copy at home, no lazy dump, no page keeper left."""
    seen = await counting_on(engine_b, name, on_device)
    assert on_device in seen and continuous(seen[seen.index(on_device):]), seen
    assert await started_at(engine_b, name) == began, "restored from a checkpoint, not unpaused"
    assert not (await engine_b.inspect_container(name))["State"]["Paused"]
    assert not await running(engine_a, name)
    assert not await exists(engine_a, name), "the home copy is removed"
    assert lazy_dumps_alive() == []
    wait_for(lambda: keepers_alive() == [], timeout=30, what="the home restore's page keeper gone")


async def test_the_way_home_resumes_before_the_memory_arrives_from_the_device(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    bed = agent_server.bed
    try:
        config, on_device, home_checks = await _out(agent_server, engine_a, engine_b, tmp_path, unique_name)
        daemon = await _ready(DaemonProcess(config))
        try:
            code, record = await migrate_by_cli(config, unique_name, "host")
            assert code == 0, record
            assert (record["state"], record["from"], record["to"]) == ("done", "pixel", "host"), record
            assert states(daemon, unique_name)[-3:] == ["restoring", "paging", "done"]
            # The device dumped no memory: every page its program touched came after the resume, from its tasks.
            assert record["bytes_sent"] >= MB * 2**20, record
            frozen = next(e for e in daemon.lines if e.get("msg") == "checkpointed on the device")
            assert frozen["via"] == "lazy-dump" and frozen["bytes"] < MB * 2**20, frozen
            timings = record["timings"]
            assert timings["downtime_s"] == timings["resumed_s"] <= timings["last_page_s"], timings
            # Its log at home starts at the restore: on from where it was on the device, never from 1 again.
            seen = await counting_on(engine_a, unique_name, on_device)
            assert seen[0] >= on_device and continuous(seen), seen
            # Its memory is whole: the counter checks every page each round, as it did before it ever left.
            assert checks(await engine_a.container_logs(unique_name)) == home_checks
            assert _dump_ended_well(daemon)
            assert not any("did not end cleanly" in e.get("msg", "") for e in daemon.lines)
            assert not await exists(engine_b, unique_name), "the device's copy is gone: exactly once"
            assert lazy_dumps_alive() == []
            wait_for(lambda: keepers_alive() == [], timeout=30, what="the home restore's page keeper gone")
        finally:
            await daemon.kill()
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)


@pytest.mark.parametrize("fault", ["stream", "commit", "paging"])
async def test_a_fault_on_the_way_home_unpauses_the_device_s_tasks(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        fault: str) -> None:
    """`stream`, `commit`: before the host resumed it; `paging`: resumed at home, its memory arriving. Each
    rolls back to the device's paused tasks, unpaused — the same process (its start time unchanged), counting
    on — and nothing of it left at home."""
    bed = agent_server.bed
    try:
        config, on_device, _checks = await _out(agent_server, engine_a, engine_b, tmp_path, unique_name)
        began = await started_at(engine_b, unique_name)
        daemon = await _ready(DaemonProcess(config, env=injected(fault, unique_name)))
        try:
            code, record = await migrate_by_cli(config, unique_name, "host")
            assert code != 0 and record["state"] == "rolled-back", record
            assert "injected fault" in record["error"], record["error"]
            assert ("paging" in states(daemon, unique_name)) is (fault == "paging")
            assert not _dump_ended_well(daemon)
        finally:
            await daemon.kill()
        await _back_on_the_device(engine_a, engine_b, unique_name, on_device, began)
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)


async def test_the_daemon_killed_while_pages_come_home(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """SIGKILL to the daemon at `paging`: the device's agent sees its session end and resets the dump, so its
    tasks stay paused (not running) until the word; the home copy, without its pages, is not the container.
    The restarted daemon settles it: rolled back, the device's tasks unpaused, nothing at home."""
    bed = agent_server.bed
    try:
        config, on_device, _checks = await _out(agent_server, engine_a, engine_b, tmp_path, unique_name)
        began = await started_at(engine_b, unique_name)
        before = extractions()
        daemon = await _ready(DaemonProcess(config))
        move = asyncio.create_task(migrate_by_cli(config, unique_name, "host"))
        try:
            await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
            await daemon.kill()
            await asyncio.gather(move, return_exceptions=True)
            await _held_paused(engine_b, unique_name)
        finally:
            await daemon.kill()
            await asyncio.gather(move, return_exceptions=True)
        again = DaemonProcess(config)
        await again.start()
        try:
            end = await finished(again, unique_name, timeout=120)
            assert end["state"] == "rolled-back", end
        finally:
            await again.kill()
        await _back_on_the_device(engine_a, engine_b, unique_name, on_device, began)
        # The home restore the kill cut left containerd's copy of its checkpoint; the restart's settling removed it.
        assert extractions() - before == set()
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)


async def test_the_device_s_criu_killed_while_it_serves_pages(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """SIGKILL to the device's lazy dump (its runc and CRIU) at `paging`: CRIU had thawed the device's freezer
    once it seized the tasks, and the agent's hold froze it again, so they stay still. The agent reports that
    its dump stopped serving; the daemon rolls back at once, removes the home copy, and only then unpauses the
    device's same process."""
    bed = agent_server.bed
    try:
        config, on_device, _checks = await _out(agent_server, engine_a, engine_b, tmp_path, unique_name)
        began = await started_at(engine_b, unique_name)
        daemon = await _ready(DaemonProcess(config))
        try:
            move = asyncio.create_task(migrate_by_cli(config, unique_name, "host"))
            await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
            (dump,) = lazy_dumps_alive()
            killed = time.time()
            os.killpg(dump, signal.SIGKILL)  # runc and the CRIU it started: one process group
            end = await finished(daemon, unique_name, timeout=60)
            assert end["state"] == "rolled-back", end
            assert "the device's lazy dump stopped serving pages" in str(end.get("detail")), end
            assert (await move)[1]["state"] == "rolled-back"
        finally:
            await daemon.kill()
        await _back_on_the_device(engine_a, engine_b, unique_name, on_device, began)
        assert_still_until_settled(daemon, bed.engine_b.cli("logs", "-t", unique_name), killed)
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)


async def test_the_device_s_agent_killed_while_it_serves_pages(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """SIGKILL to the device's agent at `paging`: its socket to the dump resets as it dies, so the device's tasks
    go back to paused (not running) while no one can unpause them; the home copy, short of pages, is removed,
    and once the agent is back the daemon unpauses them — the same process, counting on."""
    bed = agent_server.bed
    agent = faulty_agent(agent_server, "none", AGENT_PORT + 68, tmp_path)
    try:
        config, on_device, _checks = await _out(agent_server, engine_a, engine_b, tmp_path, unique_name,
                                                port=AGENT_PORT + 68)
        began = await started_at(engine_b, unique_name)
        daemon = await _ready(DaemonProcess(config))
        try:
            move = asyncio.create_task(migrate_by_cli(config, unique_name, "host"))
            await daemon.wait_for_log(state_of(unique_name, "paging"), timeout=120)
            agent.kill()
            await _held_paused(engine_b, unique_name)
            agent.start()
            end = await finished(daemon, unique_name, timeout=120)
            assert end["state"] == "rolled-back", end
            assert (await move)[1]["state"] == "rolled-back"
        finally:
            await daemon.kill()
        await _back_on_the_device(engine_a, engine_b, unique_name, on_device, began)
    finally:
        agent.stop()
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)
