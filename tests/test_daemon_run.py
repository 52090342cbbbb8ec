"""`androcond run` as a real process against engine A of the test bed."""

from __future__ import annotations

import asyncio
import os
import socket
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
        # does not leak into log lines about other things.
        reports = [e for e in daemon.lines if e.get("msg") == "labelled container seen" and e.get("container") == early]
        assert len(reports) == 1
        assert not any(e.get("container") for e in daemon.lines if e.get("msg") == "following docker events")
        # This config gives the device no known_hosts: preflight refuses before freezing anything.
        refused = await daemon.wait_for_log(lambda e: (e.get("msg"), e.get("state"), e.get("container")) == (
            "migration state", "rejected", early))
        assert "known_hosts" in refused["detail"]
        assert (await engine_a.inspect_container(early_id))["State"]["Running"]

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


async def test_sd_notify_ready_status_watchdog_stopping(testbed: TestBed, tmp_path: Path) -> None:
    """systemd's side of `Type=notify` + `WatchdogSec=`: a datagram socket the test reads, as systemd would."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    received: list[str] = []

    async def until(prefix: str) -> str:
        async with asyncio.timeout(30):
            while True:
                for message in received:
                    if message.startswith(prefix) or f"\n{prefix}" in message:
                        return message
                received.append((await loop.sock_recv(sock, 4096)).decode())

    env = dict(os.environ, NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
    env.pop("WATCHDOG_PID", None)
    daemon = DaemonProcess(daemon_config(tmp_path, testbed, testbed.engine_a.host), env=env)
    await daemon.start()
    try:
        ready = await until("READY=1")
        assert "STATUS=following Docker events" in ready
        await until("WATCHDOG=1")
        assert await daemon.stop() == 0
        stopping = await until("STOPPING=1")
        assert "STATUS=shutting down" in stopping
    finally:
        await daemon.kill()
        sock.close()
