"""The device engine restores without containerd's copies (real bed): with androcond's runtime the engine
sees only a stub checkpoint and CRIU reads the images where the agent wrote them; with or without it, nothing
a migration brought stays on the device's disk once it runs there — nor at the source after a rollback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from androcond.criu.leftovers import extractions
from androcond.engine import Engine

from ..helpers import DaemonProcess, counter_config, start_counting, wait_for_count
from ..testbed.bed import RUN_FILTER
from ..testbed.engines import DOCKER_CLI
from ..testbed.proc import run
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import (
    assert_back_at_source,
    faulty_agent,
    finished,
    migrate_by_cli,
    write_daemon_config,
)

pytestmark = pytest.mark.testbed


def used_bytes(*roots: Path) -> int:
    """Bytes of the files under the roots (not the file system's free space: other writers share it)."""
    total = 0
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    continue
    return total


async def start_counter(engine: Engine, name: str, mb: int, *, label: bool = True, at_least: int = 2) -> int:
    """Started and counting (to at_least); the last count seen. With `label`, start it before the daemon, which
    moves it from its startup scan (a daemon already running would freeze it at once, maybe before its first
    count); without, `migrate` moves it."""
    config = counter_config(**({"androcond.migrate": "pixel"} if label else {}))
    config["Cmd"] = ["/bin/counter", str(mb)]
    return await start_counting(engine, config, name, at_least=at_least)


@pytest.mark.parametrize("way", ["none", "no-runtime", "post-copy"])
async def test_five_migrations_leave_nothing_on_the_device(agent_server: AgentBed, engine_a: Engine,
                                                           engine_b: Engine, tmp_path: Path, unique_name: str,
                                                           way: str) -> None:
    """Each way a device restores (in place, the plain engine restore, post-copy), five moves of 256 MB."""
    bed = agent_server.bed
    fault = "none" if way == "post-copy" else way
    agent = faulty_agent(agent_server, fault, AGENT_PORT + {"none": 31, "no-runtime": 32, "post-copy": 35}[way],
                         tmp_path)
    spool = agent.directory / f"{agent.name}-spool"
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, port=agent.port,
                                               extra="lazy = true" if way == "post-copy" else ""))
    spool.mkdir(parents=True, exist_ok=True)
    before_extractions, before_used = extractions(), used_bytes(bed.engine_b.data_root, spool)
    await daemon.start()
    names = [f"{unique_name}-{i}" for i in range(5)]
    try:
        for name in names:  # one after the other: each its own restore, each counting before it moves
            await start_counter(engine_a, name, mb=256, label=False)
            code, record = await migrate_by_cli(daemon.config, name)
            assert (code, record["state"]) == (0, "done"), record
            # Where the device's restore went, from its own clocks; the plain engine restore has no runtime
            # to stamp it, so it is not broken down.
            timings = record["timings"]
            assert 0 < timings["restore_device_s"] <= timings["restore_s"], timings
            steps = {k: v for k, v in timings.items()
                     if k.startswith("restore_") and k not in ("restore_s", "restore_device_s")}
            if way == "no-runtime":
                assert steps == {}, steps
            else:
                wanted = {"engine", "runc", "criu", "answer"} | ({"pager"} if way == "post-copy" else set())
                assert set(steps) == {f"restore_{step}_s" for step in wanted}, timings
                assert steps["restore_criu_s"] > 0, timings
                assert sum(steps.values()) <= timings["restore_device_s"] + 0.01, timings
        for name in names:
            moved = await engine_b.inspect_container(name)
            assert moved["HostConfig"]["Runtime"] == ("androcond" if fault == "none" else "runc")
            if way == "post-copy":
                assert "paging" in {e.get("state") for e in daemon.lines if e.get("container") == name}
            seen = await wait_for_count(engine_b, name, at_least=3)
            assert seen[0] > 1, "restarted instead of restored"
        # The engine still manages it as usual.
        run([DOCKER_CLI, "-H", bed.engine_b.host, "stop", "-t", "1", names[0]])
        assert not (await engine_b.inspect_container(names[0]))["State"]["Running"]
        new = extractions() - before_extractions
        assert new == set(), f"containerd's copies left behind: {sorted(new)}"
        assert not any((spool / "images").glob("*/*")), "spooled images left behind"
        for name in names:
            cid = (await engine_b.inspect_container(name))["Id"]
            assert not any((bed.engine_b.data_root / "containers" / cid / "checkpoints").glob("*")), name
        grown = used_bytes(bed.engine_b.data_root, spool) - before_used
        assert grown < 16 * 2**20, f"the device keeps {grown / 2**20:.0f} MiB more after 5 migrations of 256 MB"
        assert any(e.get("msg") == "checkpointed" for e in daemon.lines)
    finally:
        await daemon.kill()
        agent.stop()
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_a_rollback_leaves_no_copy_at_the_source(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                       tmp_path: Path, unique_name: str) -> None:
    agent = faulty_agent(agent_server, "refuse-restore", AGENT_PORT + 33, tmp_path)
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, port=agent.port))
    before = extractions()
    try:
        counted = await start_counter(engine_a, unique_name, mb=32)
        await daemon.start()
        end = await finished(daemon, unique_name)
        assert end["state"] == "rolled-back", end
        await assert_back_at_source(engine_a, engine_b, unique_name, counted)
        assert extractions() - before == set(), "containerd's copy of the rollback's checkpoint is left"
        cid = (await engine_a.inspect_container(unique_name))["Id"]
        checkpoints = agent_server.bed.engine_a.data_root / "containers" / cid / "checkpoints"
        assert not any(checkpoints.glob("*")), "the source's checkpoint is kept after the rollback"
    finally:
        await daemon.kill()
        agent.stop()
