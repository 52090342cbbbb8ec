"""The way back on the real bed: a container that moved to the namespace device comes home to the daemon's own
engine with `androcond migrate NAME --to host`, counting on, with what was written on the device and the
configuration it had at home; a fault after the device froze it ends with it running on the device again."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine

from ..helpers import DaemonProcess, counter_config, start_counting
from ..testbed.engines import DOCKER_CLI
from ..testbed.proc import run
from .conftest import AgentBed
from .daemon_bed import continuous, counting_on, finished, migrate_by_cli, running, write_daemon_config

pytestmark = pytest.mark.testbed

LABELS = {"androcond.migrate": "pixel", "team": "edge"}


def _config() -> dict[str, Any]:
    config = counter_config(**LABELS)
    config["Env"] = ["MODE=way-back"]
    config["HostConfig"] = {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}}
    return config


def _exec(host: str, name: str, *argv: str) -> str:
    return run([DOCKER_CLI, "-H", host, "exec", name, *argv]).stdout.decode()


async def _containers(config: Path) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "androcond", "containers", "--json",
                                                "--config", str(config), stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    containers: list[dict[str, Any]] = json.loads(out)["containers"]
    return containers


async def _out_to_the_device(agent: AgentBed, engine_a: Engine, engine_b: Engine, directory: Path,
                             name: str) -> tuple[Path, int]:
    """Moved out by its label (a daemon of its own, gone after); the count it reached on the device."""
    config = write_daemon_config(agent, directory)
    daemon = DaemonProcess(config)
    try:
        counted = await start_counting(engine_a, _config(), name)
        await daemon.start()
        done = await finished(daemon, name)
        assert done["state"] == "done", done
    finally:
        await daemon.kill()
    seen = await counting_on(engine_b, name, counted)
    return config, seen[-1]


async def test_out_and_back_counts_on_with_the_device_s_files_and_its_home_configuration(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    bed = agent_server.bed
    home: dict[str, Any] | None = None
    try:
        config, on_device = await _out_to_the_device(agent_server, engine_a, engine_b, tmp_path, unique_name)
        _exec(bed.engine_b.host, unique_name, "sh", "-c", "echo written-on-the-device > /tmp/news")
        daemon = DaemonProcess(config)
        await daemon.start()
        try:
            await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
            code, record = await migrate_by_cli(config, unique_name, "host")
            assert code == 0, record
            assert record["state"] == "done" and record["from"] == "pixel" and record["to"] == "host", record
            seen = await counting_on(engine_a, unique_name, on_device)
            assert continuous(seen[seen.index(on_device):] if on_device in seen else seen)
            assert not await running(engine_b, unique_name)  # the device's copy is gone: exactly once
            assert _exec(bed.engine_a.host, unique_name, "cat", "/tmp/news").strip() == "written-on-the-device"
            home = await engine_a.inspect_container(unique_name)
            assert home["Config"]["Labels"] == {**_config()["Labels"]}
            assert "MODE=way-back" in home["Config"]["Env"]
            assert home["Config"]["Cmd"] == ["/bin/counter"]
            assert home["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
            placed = {c["name"]: c for c in await _containers(config)}
            assert placed[unique_name]["where"] == "host" and placed[unique_name]["from"] == "pixel"
            # Its label names the device: brought back on request, it is not sent out again on its own.
            await daemon.wait_for_log(lambda e: e.get("msg") == "not migrating on its own: it was brought back"
                                      and e.get("container") == unique_name, timeout=30)
            assert await running(engine_a, unique_name)
        finally:
            await daemon.kill()
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)
    assert home is not None


@pytest.mark.parametrize("fault", ["stream", "commit"])
async def test_a_fault_on_the_way_back_leaves_it_running_on_the_device(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        fault: str) -> None:
    """`stream`: after the device froze it; `commit`: its files are home, the host's restore never asked."""
    bed = agent_server.bed
    try:
        config, on_device = await _out_to_the_device(agent_server, engine_a, engine_b, tmp_path, unique_name)
        daemon = DaemonProcess(config, env={**os.environ, "ANDROCOND_INJECT_FAULT": f"{fault}@{unique_name}"})
        await daemon.start()
        try:
            await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
            code, record = await migrate_by_cli(config, unique_name, "host")
            assert code != 0 and record["state"] == "rolled-back", record
            assert "injected fault" in record["error"]
        finally:
            await daemon.kill()
        seen = await counting_on(engine_b, unique_name, on_device)
        assert on_device in seen and continuous(seen[seen.index(on_device):]), str(seen)
        assert not await running(engine_a, unique_name)
        leftovers = list((tmp_path / "state" / "pulled").glob("*/*"))
        assert not leftovers, leftovers
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)
