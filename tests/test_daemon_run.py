"""`androcond run` as a real process against engine A of the test bed."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine

from .helpers import DaemonProcess, counter_config, wait_for_count
from .testbed import TestBed

pytestmark = pytest.mark.testbed


def daemon_config(tmp_path: Path, bed: TestBed, docker_host: str) -> Path:
    path = tmp_path / "androcond.toml"
    path.write_text(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
api = "unix:{tmp_path / 'api.sock'}"
log_format = "json"
[docker]
host = "{docker_host}"
[devices.pixel]
address = "{bed.device.device_ip}:{bed.sshd_port}"
identity = "{bed.device.client_key}"
""")
    return path


def seen(name: str, origin: str) -> Callable[[dict[str, Any]], bool]:
    def match(entry: dict[str, Any]) -> bool:
        return (entry.get("msg"), entry.get("container"), entry.get("origin")) == (
            "labelled container seen", name, origin)

    return match


async def test_run_follows_labelled_containers_and_stops_on_sigterm(
        testbed: TestBed, engine_a: Engine, tmp_path: Path, unique_name: str) -> None:
    early = f"{unique_name}-early"
    early_id = await engine_a.create_container(counter_config(**{"androcond.migrate": "pixel"}), name=early)
    await engine_a.start_container(early_id)

    daemon = DaemonProcess(daemon_config(tmp_path, testbed, testbed.engine_a.host))
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        startup = await daemon.wait_for_log(seen(early, "running-at-startup"))
        assert startup["device"] == "pixel"

        late = f"{unique_name}-late"
        late_id = await engine_a.create_container(
            counter_config(**{"androcond.migrate": "pixel", "androcond.delay": "1m", "androcond.keep-source": "yes"}),
            name=late)
        await engine_a.start_container(late_id)
        entry = await daemon.wait_for_log(seen(late, "start-event"))
        assert entry["delay_s"] == 60.0
        assert entry["keep_source"] is True
        assert entry["container_id"] == late_id[:12]
        # The startup scan and the replayed start event are one container: reported once, and its context
        # does not leak into later log lines.
        assert sum(1 for e in daemon.lines if e.get("container") == early) == 1

        bad = f"{unique_name}-bad"
        bad_id = await engine_a.create_container(counter_config(**{"androcond.migrate": "iphone"}), name=bad)
        await engine_a.start_container(bad_id)
        rejected = await daemon.wait_for_log(
            lambda e: e.get("msg") == "migration label rejected; container left running" and e.get("container") == bad)
        assert "unknown device" in rejected["reason"]
        assert rejected["level"] == "warning"
        await wait_for_count(engine_a, bad_id, at_least=2)  # the rejected container keeps running

        started = time.monotonic()
        code = await daemon.stop()
        assert code == 0, daemon.raw[-10:]
        assert time.monotonic() - started < 10
        assert any(e.get("msg") == "stopped" for e in daemon.lines)
    finally:
        await daemon.kill()


async def test_unreachable_engine_is_retried_with_backoff(testbed: TestBed, tmp_path: Path) -> None:
    missing = tmp_path / "no-engine.sock"
    daemon = DaemonProcess(daemon_config(tmp_path, testbed, f"unix://{missing}"))
    await daemon.start()
    try:
        first = await daemon.wait_for_log(lambda e: e.get("msg") == "docker engine unreachable, retrying")
        assert str(missing) in first["reason"]

        def retry(e: dict[str, object]) -> bool:
            return e.get("msg") == "docker engine unreachable, retrying" and e is not first

        second = await daemon.wait_for_log(retry)
        assert isinstance(second["retry_in_s"], float)
        assert daemon.proc is not None
        assert daemon.proc.returncode is None, "the daemon keeps running while the engine is away"
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
