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

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from androcond.engine import Engine
from androcond.migration.stream import WORKSPACE_KINDS

from ..helpers import DaemonProcess, counter_config, start_counting
from ..testbed.engines import DOCKER_CLI
from ..testbed.proc import run, wait_for
from .conftest import AgentBed
from .daemon_bed import continuous, counting_on, finished, killed_at, migrate_by_cli, running, write_daemon_config

pytestmark = pytest.mark.testbed

LABELS = {"androcond.migrate": "pixel", "team": "edge"}


def _config(mb: int = 0) -> dict[str, Any]:
    config = counter_config(**LABELS)
    if mb:
        config["Cmd"] = ["/bin/counter", str(mb)]
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


async def _moves(api: Path) -> dict[tuple[str, str, str], float]:
    """The daemon's `androcond_moves_total` samples: (from, to, outcome) → count."""
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(api))) as session, \
            asyncio.timeout(30), session.get("http://androcond/metrics") as response:
        text = await response.text()
    return {(s.labels["from_place"], s.labels["to_place"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "androcond_moves_total"}


async def _out_to_the_device(agent: AgentBed, engine_a: Engine, engine_b: Engine, directory: Path,
                             name: str, mb: int = 0) -> tuple[Path, int]:
    """Moved out by its label (a daemon of its own, gone after); the count it reached on the device."""
    config = write_daemon_config(agent, directory)
    daemon = DaemonProcess(config)
    try:
        counted = await start_counting(engine_a, _config(mb), name)
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
            # Nothing to recode: the device's files went on to the host as they came, not through the workspace.
            relayed = await daemon.wait_for_log(lambda e: e.get("msg", "").startswith("relayed the source's files"))
            assert relayed["files"] >= 10 and relayed["bytes"] == record["bytes_sent"] > 0, relayed
            seen = await counting_on(engine_a, unique_name, on_device)
            assert continuous(seen[seen.index(on_device):] if on_device in seen else seen)
            assert not await running(engine_b, unique_name)  # the device's copy is gone: exactly once
            assert _exec(bed.engine_a.host, unique_name, "cat", "/tmp/news").strip() == "written-on-the-device"
            home = await engine_a.inspect_container(unique_name)
            assert home["Config"]["Labels"] == {**_config()["Labels"]}
            assert "MODE=way-back" in home["Config"]["Env"]
            assert home["Config"]["Cmd"] == ["/bin/counter"]
            assert home["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
            moves = await _moves(tmp_path / "api.sock")
            assert moves.get(("pixel", "host", "done")) == 1, moves
            placed = {c["name"]: c for c in await _containers(config)}
            assert placed[unique_name]["where"] == "host" and placed[unique_name]["from"] == "pixel"
            # Its label names the device: brought back on request, it is not sent out again on its own.
            await daemon.wait_for_log(lambda e: e.get("msg") == "not migrating on its own: it was brought back"
                                      and e.get("container") == unique_name, timeout=30)
            assert await running(engine_a, unique_name)
            # The first daemon was killed right after "done"; this one swept what that left, and its own move
            # cleans up after itself.
            _workspace_empty(tmp_path / "state")
        finally:
            await daemon.kill()
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)
    assert home is not None


def _workspace_empty(state: Path) -> None:
    def left() -> list[str]:
        return [f"{kind}/{d.name}" for kind in WORKSPACE_KINDS if (state / kind).is_dir()
                for d in (state / kind).iterdir()]

    # The daemon is another process: polling its files blocks nothing of it.
    wait_for(lambda: not left(), timeout=30, interval=0.1, what=f"an empty workspace (left: {left()})")


@pytest.mark.parametrize("fault", ["stream", "commit", "restore-refused"])
async def test_a_fault_on_the_way_back_leaves_it_running_on_the_device(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        fault: str) -> None:
    """`stream`: after the device froze it; `commit`: its files are home, the host's restore never asked;
    `restore-refused`: the host's CRIU refuses the images (the device's own checkpoint is the rollback)."""
    bed = agent_server.bed
    try:
        config, on_device = await _out_to_the_device(agent_server, engine_a, engine_b, tmp_path, unique_name)
        daemon = DaemonProcess(config, env={**os.environ, "ANDROCOND_INJECT_FAULT": f"{fault}@{unique_name}"})
        await daemon.start()
        try:
            await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
            code, record = await migrate_by_cli(config, unique_name, "host")
            assert code != 0 and record["state"] == "rolled-back", record
            why = "did not restore" if fault == "restore-refused" else "injected fault"
            assert why in record["error"], record["error"]
        finally:
            await daemon.kill()
        seen = await counting_on(engine_b, unique_name, on_device)
        assert on_device in seen and continuous(seen[seen.index(on_device):]), str(seen)
        assert not await running(engine_a, unique_name)
        leftovers = list((tmp_path / "state" / "pulled").glob("*/*"))
        assert not leftovers, leftovers
        assert not _containers_named(bed.engine_a.host, unique_name), "the host's target container is removed"
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)


async def _exactly_once(engine_a: Engine, engine_b: Engine, name: str, counted: int) -> str:
    """Where it runs, having checked it runs in exactly one place and counts on past `counted` there."""
    home, device = await running(engine_a, name), await running(engine_b, name)
    assert home != device, f"running at home: {home}, on the device: {device}"
    engine = engine_a if home else engine_b
    seen = await counting_on(engine, name, counted)
    assert seen[-1] > counted
    return "host" if home else "pixel"


@pytest.mark.parametrize("state", ["checkpointing", "streaming", "restoring"])
async def test_the_daemon_killed_on_the_way_back_is_settled_by_its_restart(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        state: str) -> None:
    """SIGKILL when the way back enters `state`; the next daemon settles it: exactly once, and nothing of the
    move left at home (a target container made at begin is removed by the host's own recovery)."""
    bed = agent_server.bed
    try:
        config, on_device = await _out_to_the_device(agent_server, engine_a, engine_b, tmp_path, unique_name)
        await killed_at(config, unique_name, "host", state)
        again = DaemonProcess(config)
        await again.start()
        try:
            end = await finished(again, unique_name)
            expected = ("rolled-back",) if state != "restoring" else ("rolled-back", "done")
            assert end["state"] in expected, end
            where = await _exactly_once(engine_a, engine_b, unique_name, on_device)
            assert where == ("host" if end["state"] == "done" else "pixel"), (end, where)
            if where == "pixel":
                assert not _containers_named(bed.engine_a.host, unique_name), "a target container left at home"
        finally:
            await again.kill()
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)


def _containers_named(host: str, name: str) -> list[str]:
    out = run([DOCKER_CLI, "-H", host, "ps", "-a", "-q", "--filter", f"name=^/{name}$"]).stdout.decode()
    return out.split()


async def test_the_agent_killed_while_it_sends_is_rolled_back_once_it_is_back(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """The device's agent dies mid-stream: the container is frozen there and nobody can restore it until the
    agent is back; the daemon keeps the move unresolved and settles it then (the resolver)."""
    bed = agent_server.bed
    try:
        config, on_device = await _out_to_the_device(agent_server, engine_a, engine_b, tmp_path, unique_name,
                                                     mb=256)
        daemon = DaemonProcess(config)
        await daemon.start()
        try:
            await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
            asking = asyncio.create_task(migrate_by_cli(config, unique_name, "host"))
            # Frozen on the device; its 256 MB of pages are on their way.
            await daemon.wait_for_log(lambda e: e.get("msg") == "checkpointed on the device"
                                      and e.get("container") == unique_name, timeout=60)
            agent_server.agent.kill()
            # The rollback needs the device: the move stays unresolved, the container frozen there.
            await daemon.wait_for_log(lambda e: e.get("msg") == "could not settle the migration; the resolver will"
                                      and e.get("container") == unique_name, timeout=120)
            assert not await running(engine_b, unique_name) and not await running(engine_a, unique_name)
            assert not asking.done(), "`migrate --wait` waits while the move is unresolved"
            agent_server.agent.start()
            code, record = await asking
            assert code != 0 and record["state"] == "rolled-back", record
            assert await _exactly_once(engine_a, engine_b, unique_name, on_device) == "pixel"
            assert daemon.proc is not None and daemon.proc.returncode is None, "the daemon runs on"
        finally:
            await daemon.kill()
    finally:
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)


async def test_a_home_that_cannot_take_it_refuses_before_the_device_freezes(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """Its host port is taken at home meanwhile: the host's engine cannot honour its configuration, so the way
    back is refused before anything is frozen, and it counts on on the device."""
    bed = agent_server.bed
    squatter = f"{unique_name}-squat"
    config = write_daemon_config(agent_server, tmp_path)
    first = DaemonProcess(config)
    try:
        container = _config()
        container["ExposedPorts"] = {"8080/tcp": {}}
        container["HostConfig"]["PortBindings"] = {"8080/tcp": [{"HostPort": "18181"}]}
        counted = await start_counting(engine_a, container, unique_name)
        await first.start()
        out = await finished(first, unique_name)
        assert out["state"] == "done", out
        await first.kill()
        on_device = (await counting_on(engine_b, unique_name, counted))[-1]
        bed.engine_a.cli("run", "-d", "--name", squatter, "--label", "androcond-test=1", "-p", "18181:8080",
                         _config()["Image"], "/bin/counter")
        daemon = DaemonProcess(config)
        await daemon.start()
        try:
            await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
            code, record = await migrate_by_cli(config, unique_name, "host")
            assert code != 0 and record["state"] == "rejected", record
            assert "18181" in record["error"], record["error"]
            assert await _exactly_once(engine_a, engine_b, unique_name, on_device) == "pixel"
            assert not _containers_named(bed.engine_a.host, unique_name)
        finally:
            await daemon.kill()
    finally:
        await first.kill()
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)
        bed.engine_a.cli("rm", "-f", squatter, check=False)


async def test_a_named_volume_comes_home_as_the_device_left_it(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """A file written into the volume on the device is at home, and one deleted there is gone at home too
    (the host's copy of the volume, still on its engine since the way out, is not what comes back)."""
    bed = agent_server.bed
    volume = f"acd-vol-{unique_name[-8:]}"
    container = _config()
    container["Cmd"] = ["/bin/sh", "-c", "echo at-home > /vol/old && exec /bin/counter"]
    container["HostConfig"]["Mounts"] = [{"Type": "volume", "Source": volume, "Target": "/vol"}]
    config = write_daemon_config(agent_server, tmp_path)
    first = DaemonProcess(config)
    try:
        counted = await start_counting(engine_a, container, unique_name)
        await first.start()
        out = await finished(first, unique_name)
        assert out["state"] == "done", out
        await first.kill()
        on_device = (await counting_on(engine_b, unique_name, counted))[-1]
        _exec(bed.engine_b.host, unique_name, "sh", "-c", "rm /vol/old && echo on-device > /vol/new")
        daemon = DaemonProcess(config)
        await daemon.start()
        try:
            await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
            code, record = await migrate_by_cli(config, unique_name, "host")
            assert code == 0, record
            await counting_on(engine_a, unique_name, on_device)
            listing = _exec(bed.engine_a.host, unique_name, "ls", "/vol").split()
            assert listing == ["new"], listing
            assert _exec(bed.engine_a.host, unique_name, "cat", "/vol/new").strip() == "on-device"
        finally:
            await daemon.kill()
    finally:
        await first.kill()
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)
            engine.cli("volume", "rm", "-f", volume, check=False)


async def test_a_volume_another_container_uses_at_home_refuses_the_way_back(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """Bringing it home would replace the volume's data under another container's feet: refused before the
    device freezes anything, and it counts on on the device."""
    bed = agent_server.bed
    volume, user = f"acd-vol-{unique_name[-8:]}", f"{unique_name}-user"
    container = _config()
    container["HostConfig"]["Mounts"] = [{"Type": "volume", "Source": volume, "Target": "/vol"}]
    config = write_daemon_config(agent_server, tmp_path)
    first = DaemonProcess(config)
    try:
        counted = await start_counting(engine_a, container, unique_name)
        await first.start()
        out = await finished(first, unique_name)
        assert out["state"] == "done", out
        await first.kill()
        on_device = (await counting_on(engine_b, unique_name, counted))[-1]
        bed.engine_a.cli("run", "-d", "--name", user, "--label", "androcond-test=1", "-v", f"{volume}:/data",
                         _config()["Image"], "/bin/counter")
        daemon = DaemonProcess(config)
        await daemon.start()
        try:
            await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
            code, record = await migrate_by_cli(config, unique_name, "host")
            assert code != 0 and record["state"] == "rejected", record
            assert volume in record["error"] and user in record["error"], record["error"]
            assert await _exactly_once(engine_a, engine_b, unique_name, on_device) == "pixel"
        finally:
            await daemon.kill()
    finally:
        await first.kill()
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)
        bed.engine_a.cli("rm", "-f", user, check=False)
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("volume", "rm", "-f", volume, check=False)
