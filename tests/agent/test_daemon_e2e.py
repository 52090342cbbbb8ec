"""The product, end to end on the real test bed: `androcond run` sees a labelled container on engine A and
it ends up running on engine B (the device) — memory, files and volume — or, when anything fails, running
again at the source. Exactly once, every time."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from androcond.criu.leftovers import extractions
from androcond.engine import Engine

from ..helpers import DaemonProcess, counter_config, counts, start_counting, wait_for_count
from ..testbed.bed import RUN_FILTER
from ..testbed.engines import DOCKER_CLI
from ..testbed.proc import run
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import (
    assert_back_at_source,
    continuous,
    counting_on,
    faulty_agent,
    finished,
    running,
    state_of,
    write_daemon_config,
)

pytestmark = pytest.mark.testbed

SCRIPT = ("echo written-before > /data/note && rm /etc/image-file && echo volume-data > /vol/data && "
          "exec /bin/counter {mb}")


def workload(name_labels: dict[str, str], volume: str, mb: int = 0) -> dict[str, Any]:
    config = counter_config(**name_labels)
    config["Cmd"] = ["/bin/sh", "-c", SCRIPT.format(mb=mb or "")]
    config["HostConfig"] = {"Mounts": [{"Type": "volume", "Source": volume, "Target": "/vol"}]}
    return config


async def start_workload(engine: Engine, name: str, labels: dict[str, str], volume: str, mb: int = 0) -> int:
    """Started and counting (so its files are written too); the last count seen. Started before the daemon, which
    moves it from its startup scan: a daemon already running would freeze it at once, maybe before its first
    count, and the tests compare what it counted before the move with what it counts after."""
    return await start_counting(engine, workload(labels, volume, mb), name)


def label_rejected(name: str) -> Callable[[dict[str, Any]], bool]:
    def match(entry: dict[str, Any]) -> bool:
        return str(entry.get("msg", "")).startswith("migration label rejected") and entry.get("container") == name

    return match


@pytest.fixture
def volume(agent_server: AgentBed) -> Any:
    name = f"acd-vol-{uuid.uuid4().hex[:8]}"
    yield name
    bed = agent_server.bed
    bed.engine_a.remove_containers(RUN_FILTER)
    bed.engine_b.remove_containers(RUN_FILTER)
    for engine in (bed.engine_a, bed.engine_b):
        engine.cli("volume", "rm", "-f", name, check=False)


async def test_labelled_container_moves_with_memory_files_and_volume(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        volume: str) -> None:
    bed = agent_server.bed
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path))
    try:
        counted = await start_workload(engine_a, unique_name, {"androcond.migrate": "pixel"}, volume)
        await daemon.start()
        done = await finished(daemon, unique_name)
        assert done["state"] == "done", done
        assert any(e.get("msg") == "checkpointed" and e.get("via") == "runc" for e in daemon.lines)
        assert not await running(engine_a, unique_name)
        with pytest.raises(Exception, match="No such container"):
            await engine_a.inspect_container(unique_name)  # removed at the source (no keep-source)
        after = await wait_for_count(engine_b, unique_name, at_least=counted + 3)
        assert after[0] > counted, "restarted from 1: the memory state did not move"
        assert continuous(after)
        out = run([DOCKER_CLI, "-H", bed.engine_b.host, "exec", unique_name, "cat", "/data/note", "/vol/data"])
        assert out.stdout.decode().split() == ["written-before", "volume-data"]
        gone = run([DOCKER_CLI, "-H", bed.engine_b.host, "exec", unique_name, "test", "-e", "/etc/image-file"],
                   check=False)
        assert gone.returncode == 1
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()


async def test_keep_source_leaves_the_stopped_source(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                     tmp_path: Path, unique_name: str, volume: str) -> None:
    # Also the engine's own checkpoint path (the other tests freeze through runc directly).
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, checkpoint="engine"))
    try:
        counted = await start_workload(engine_a, unique_name,
                                       {"androcond.migrate": "pixel", "androcond.keep-source": "true"}, volume)
        await daemon.start()
        assert (await finished(daemon, unique_name))["state"] == "done"
        assert any(e.get("msg") == "checkpointed" and e.get("via") == "engine" for e in daemon.lines)
        source = await engine_a.inspect_container(unique_name)
        assert not source["State"]["Running"]
        before = counts(await engine_a.container_logs(unique_name))  # all it counted before the freeze
        assert counted in before and continuous(before), before
        after = await wait_for_count(engine_b, unique_name, at_least=before[-1] + 2)
        assert after[0] == before[-1] + 1
    finally:
        await daemon.kill()


async def test_bad_labels_and_bind_mounts_are_rejected_before_freezing(
        agent_server: AgentBed, engine_a: Engine, tmp_path: Path, unique_name: str) -> None:
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path))
    await daemon.start()
    try:
        bind_dir = tmp_path / "bind"
        bind_dir.mkdir()
        cases = {
            f"{unique_name}-nodev": ({"androcond.migrate": "nowhere"}, None, "unknown device"),
            f"{unique_name}-delay": ({"androcond.migrate": "pixel", "androcond.delay": "soon"}, None, "duration"),
            f"{unique_name}-bind": ({"androcond.migrate": "pixel"}, f"{bind_dir}:/bind", "bind mount"),
        }
        for name, (labels, bind, _) in cases.items():
            config = counter_config(**labels)
            if bind:
                config["HostConfig"] = {"Binds": [bind]}
            await engine_a.start_container(await engine_a.create_container(config, name=name))
        bind_name = f"{unique_name}-bind"
        rejected = await daemon.wait_for_log(state_of(bind_name, "rejected"))
        assert "bind mount" in rejected["detail"]
        for name in (f"{unique_name}-nodev", f"{unique_name}-delay"):
            entry = await daemon.wait_for_log(label_rejected(name))
            assert cases[name][2] in entry["reason"]
        for name in cases:
            seen = await wait_for_count(engine_a, name, at_least=3)
            assert continuous(seen), f"{name} was disturbed"
        assert not any(e.get("state") == "checkpointing" for e in daemon.lines)
    finally:
        await daemon.kill()


@pytest.mark.parametrize("fault", ["flip-byte", "refuse-restore"])
async def test_device_faults_roll_back_to_a_continuing_source(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        volume: str, fault: str) -> None:
    agent = faulty_agent(agent_server, fault, AGENT_PORT + 1, tmp_path)
    # Raw chunks: the damage is the file digest's to catch (in a compressed chunk the chunk's own checksum
    # catches it first: tests/agent/test_agent_faults.py).
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, port=agent.port, extra='compress = "none"'))
    try:
        counted = await start_workload(engine_a, unique_name, {"androcond.migrate": "pixel"}, volume)
        await daemon.start()
        end = await finished(daemon, unique_name)
        assert end["state"] == "rolled-back", end
        await assert_back_at_source(engine_a, engine_b, unique_name, counted)
        expected = "SHA-256 mismatch" if fault == "flip-byte" else "restore refused by the device engine"
        assert expected in end["detail"]
    finally:
        await daemon.kill()
        agent.stop()


async def test_agent_killed_mid_stream(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                       tmp_path: Path, unique_name: str, volume: str) -> None:
    agent = faulty_agent(agent_server, "none", AGENT_PORT + 2, tmp_path)
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, port=agent.port))
    try:
        counted = await start_workload(engine_a, unique_name, {"androcond.migrate": "pixel"}, volume, mb=96)
        await daemon.start()
        await daemon.wait_for_log(state_of(unique_name, "streaming"), timeout=60)
        agent.kill()
        end = await finished(daemon, unique_name)
        assert end["state"] == "rolled-back", end
        await assert_back_at_source(engine_a, engine_b, unique_name, counted)
    finally:
        await daemon.kill()
        agent.stop()


async def test_daemon_killed_mid_stream_rolls_back_after_restart(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        volume: str) -> None:
    config = write_daemon_config(agent_server, tmp_path)
    daemon = DaemonProcess(config)
    before = extractions()
    try:
        counted = await start_workload(engine_a, unique_name, {"androcond.migrate": "pixel"}, volume, mb=96)
        await daemon.start()
        await daemon.wait_for_log(state_of(unique_name, "streaming"), timeout=60)
        await daemon.kill()  # SIGKILL: no cleanup of any kind
        assert not await running(engine_a, unique_name), "frozen at the source while the daemon is dead"
        again = DaemonProcess(config)
        await again.start()
        try:
            end = await finished(again, unique_name)
            assert end["state"] == "rolled-back", end
            await assert_back_at_source(engine_a, engine_b, unique_name, counted)
            # The restarted daemon found the checkpoint again and removed it, with containerd's copy.
            left = extractions() - before
            assert left == set(), left
            cid = (await engine_a.inspect_container(unique_name))["Id"]
            assert not any((agent_server.bed.engine_a.data_root / "containers" / cid / "checkpoints").glob("*"))
        finally:
            await again.kill()
    finally:
        await daemon.kill()


async def test_daemon_killed_after_the_device_restored_does_not_restore_twice(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        volume: str) -> None:
    agent = faulty_agent(agent_server, "slow-outcome", AGENT_PORT + 3, tmp_path)
    config = write_daemon_config(agent_server, tmp_path, port=agent.port)
    daemon = DaemonProcess(config)
    try:
        counted = await start_workload(engine_a, unique_name, {"androcond.migrate": "pixel"}, volume)
        await daemon.start()
        await daemon.wait_for_log(state_of(unique_name, "restoring"), timeout=60)
        async with asyncio.timeout(60):  # the device restored it; the daemon has not heard yet
            while not await running(engine_b, unique_name):  # noqa: ASYNC110 - polling another engine
                await asyncio.sleep(0.1)
        await daemon.kill()
        again = DaemonProcess(config)
        await again.start()
        try:
            end = await finished(again, unique_name)
            assert end["state"] == "done", end
            assert not await running(engine_a, unique_name), "running twice"
            after = await wait_for_count(engine_b, unique_name, at_least=counted + 3)
            assert continuous(after)
            assert after[0] > counted, "restarted: the memory state did not move"
        finally:
            await again.kill()
    finally:
        await daemon.kill()
        agent.stop()


async def test_ten_at_once_respect_the_limit(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                             tmp_path: Path, unique_name: str, volume: str) -> None:
    config = write_daemon_config(agent_server, tmp_path, max_migrations=3)
    daemon = DaemonProcess(config)
    await daemon.start()
    names = [f"{unique_name}-{i}" for i in range(10)]
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        ids = [await engine_a.create_container(counter_config(**{"androcond.migrate": "pixel"}), name=n)
               for n in names]
        await asyncio.gather(*(engine_a.start_container(cid) for cid in ids))
        ends = [await finished(daemon, n, timeout=180) for n in names]
        assert [e["state"] for e in ends] == ["done"] * 10, [e.get("detail") for e in ends if e["state"] != "done"]
        for name in names:
            assert await running(engine_b, name)
            assert not await running(engine_a, name)
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
    # From the journal: never more than 3 migrations between preflight and their end at the same moment.
    db = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
    rows = db.execute("SELECT migration_id, state, at FROM transitions ORDER BY at").fetchall()
    active, peak = set(), 0
    for mid, state, _at in rows:
        if state == "preflight":
            active.add(mid)
        elif state in ("done", "rolled-back", "failed", "rejected"):
            active.discard(mid)
        peak = max(peak, len(active))
    assert peak == 3


async def test_engine_restart_is_survived(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                          tmp_path: Path, unique_name: str) -> None:
    """Engine A restarts under the running daemon: it reconnects, and a container labelled afterwards moves."""
    bed = agent_server.bed
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path))
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        await asyncio.to_thread(bed.engine_a.stop)
        lost = await daemon.wait_for_log(lambda e: e.get("msg") == "docker engine unreachable, retrying")
        await asyncio.to_thread(bed.engine_a.start)
        await daemon.wait_for_log(lambda e: e.get("msg") == "following docker events" and
                                  daemon.lines.index(e) > daemon.lines.index(lost))
        await start_workload_plain(engine_a, unique_name)
        end = await finished(daemon, unique_name)
        assert end["state"] == "done", end
        assert await running(engine_b, unique_name)
    finally:
        await daemon.kill()


async def start_workload_plain(engine: Engine, name: str) -> None:
    cid = await engine.create_container(counter_config(**{"androcond.migrate": "pixel"}), name=name)
    await engine.start_container(cid)


async def test_sigterm_mid_migration_leaves_it_running_exactly_once(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        volume: str) -> None:
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, shutdown_timeout=0.2))
    try:
        counted = await start_workload(engine_a, unique_name, {"androcond.migrate": "pixel"}, volume, mb=96)
        await daemon.start()
        await daemon.wait_for_log(state_of(unique_name, "streaming"), timeout=60)
        assert await daemon.stop(timeout=30) == 0
        on_source, on_device = await running(engine_a, unique_name), await running(engine_b, unique_name)
        assert on_source != on_device, f"running on source: {on_source}, on device: {on_device}"
        where = engine_a if on_source else engine_b
        # Counting on, past what it counted before the move, without a restart: the source's whole log, or the
        # device's (which starts at its restore) from past that count.
        seen = await counting_on(where, unique_name, counted, more=2)
        assert continuous(seen)
        assert (counted in seen) if on_source else (seen[0] > counted), (counted, seen[:3])
        assert any(e.get("msg") == "shutdown budget spent; rolling back migrations still in flight"
                   for e in daemon.lines) or on_device
    finally:
        await daemon.kill()
