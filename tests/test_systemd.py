"""systemd integration: sd_notify against real AF_UNIX datagram sockets, and the unit file through
``systemd-analyze verify``."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from androcond.daemon.systemd import Notifier, watchdog_loop

from .tiers import unavailable

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "androcond.service"
RECV_TIMEOUT = 5.0


class Receiver:
    """The service manager's end: a bound, non-blocking datagram socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value  # what systemd would put in $NOTIFY_SOCKET

    async def recv(self) -> bytes:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(RECV_TIMEOUT):
            return await loop.sock_recv(self.sock, 65536)

    def pending(self) -> bytes | None:
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None


def _datagram_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="acd-sd-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def path_receiver(short_dir: Path) -> Iterator[Receiver]:
    path = short_dir / "notify.sock"
    with _datagram_socket() as sock:
        sock.bind(str(path))
        yield Receiver(sock, str(path))


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"androcond-test-{uuid.uuid4().hex}"
    with _datagram_socket() as sock:
        sock.bind("\0" + name)
        yield Receiver(sock, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, path_receiver: Receiver, abstract_receiver: Receiver) -> Receiver:
    return path_receiver if request.param == "path" else abstract_receiver


def notifier_for(receiver: Receiver, **extra: str) -> Notifier:
    return Notifier.from_environ({"NOTIFY_SOCKET": receiver.env_value, **extra})


async def test_messages_arrive_exactly(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    try:
        assert notifier.enabled
        assert notifier.ready()
        assert await receiver.recv() == b"READY=1"
        assert notifier.ready(status="following Docker events")
        assert await receiver.recv() == b"READY=1\nSTATUS=following Docker events"
        assert notifier.status("2 migrations in flight")
        assert await receiver.recv() == b"STATUS=2 migrations in flight"
        assert notifier.watchdog()
        assert await receiver.recv() == b"WATCHDOG=1"
        assert notifier.stopping()
        assert await receiver.recv() == b"STOPPING=1"
        assert notifier.extend_timeout(7.5)
        assert await receiver.recv() == b"EXTEND_TIMEOUT_USEC=7500000"
        assert notifier.reloading()
        assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", await receiver.recv())
        assert receiver.pending() is None, "one datagram per call"
    finally:
        notifier.close()


async def test_status_cannot_inject_assignments_and_is_bounded(path_receiver: Receiver) -> None:
    notifier = notifier_for(path_receiver)
    try:
        assert notifier.status("bad\nREADY=1\r\nSTOPPING=1\0x")
        assert await path_receiver.recv() == b"STATUS=bad READY=1 STOPPING=1 x"
        assert notifier.status("é" * 5000)
        got = await path_receiver.recv()
        assert b"\n" not in got and len(got) <= len("STATUS=") + 1024
        got.decode()  # not cut inside a UTF-8 sequence
    finally:
        notifier.close()


def test_no_op_without_notify_socket() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert not notifier.reloading()
    assert not notifier.extend_timeout(1)
    notifier.close()


def test_unsupported_address_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "{own}"}, 0.2),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),  # systemd watches another process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "thirty"}, None),
    ({"WATCHDOG_PID": "{own}"}, None),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    own = os.getpid()
    environ = {"NOTIFY_SOCKET": "@unused", **{k: v.format(own=own, other=own + 1) for k, v in env.items()}}
    assert Notifier.from_environ(environ).watchdog_interval == expected


def test_watchdog_pid_is_compared_with_the_given_pid() -> None:
    other = str(os.getpid() + 1)
    environ = {"NOTIFY_SOCKET": "@unused", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": other}
    assert Notifier.from_environ(dict(environ)).watchdog_interval is None
    assert Notifier.from_environ(dict(environ), pid=int(other)).watchdog_interval == 1.0


def test_unset_removes_the_variables_for_children() -> None:
    environ = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid()), "KEEP": "1"}
    notifier = Notifier.from_environ(environ, unset=True)
    assert notifier.enabled and notifier.watchdog_interval == 1.0
    assert environ == {"KEEP": "1"}
    kept = {"NOTIFY_SOCKET": "@x"}
    Notifier.from_environ(kept)
    assert kept == {"NOTIFY_SOCKET": "@x"}


def test_send_failure_does_not_raise_and_warns_once(short_dir: Path) -> None:
    path = short_dir / "gone.sock"
    with _datagram_socket() as sock:
        sock.bind(str(path))
    path.unlink()  # systemd went away: the path no longer exists
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(path)})
    try:
        with capture_logs() as logs:
            assert not notifier.ready()
            assert not notifier.watchdog()
            assert not notifier.status("still here")
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1, logs
        assert warnings[0]["notify_socket"] == str(path)
    finally:
        notifier.close()


def test_send_never_blocks_when_nobody_reads(path_receiver: Receiver) -> None:
    notifier = notifier_for(path_receiver)
    try:
        # The receiver's queue fills up; a blocking socket would hang here, ours reports False instead.
        results = [notifier.watchdog() for _ in range(20000)]
        assert results[0] and not results[-1]
    finally:
        notifier.close()


async def test_watchdog_loop_pings_repeatedly(path_receiver: Receiver) -> None:
    notifier = notifier_for(path_receiver, WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid()))
    assert notifier.watchdog_interval == 0.2
    task = asyncio.create_task(watchdog_loop(notifier))
    try:
        assert await path_receiver.recv() == b"WATCHDOG=1"
        assert await path_receiver.recv() == b"WATCHDOG=1"
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()


async def test_watchdog_loop_returns_when_not_watched(path_receiver: Receiver) -> None:
    async with asyncio.timeout(RECV_TIMEOUT):
        await watchdog_loop(notifier_for(path_receiver))  # no WATCHDOG_USEC
        await watchdog_loop(Notifier.from_environ({"WATCHDOG_USEC": "200000"}))  # no NOTIFY_SOCKET
    assert path_receiver.pending() is None


def test_unit_declares_notify_and_watchdog() -> None:
    lines = {line.strip() for line in UNIT.read_text().splitlines()}
    assert "Type=notify" in lines
    assert "NotifyAccess=main" in lines
    assert any(line.startswith("WatchdogSec=") for line in lines)


def _androcond_command() -> str:
    """The androcond entry point of the Python running the tests (the venv's)."""
    candidate = Path(sys.executable).parent / "androcond"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("androcond")
    if found:
        return found
    return f"{sys.executable} -m androcond"


@pytest.mark.system
def test_unit_passes_systemd_analyze_verify(short_dir: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze missing: scripts/install-system.sh installs the systemd package")
    # verify checks that ExecStart's binary exists; the unit names the /usr/local/bin install.
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=/usr/local/bin/androcond run$", text, re.MULTILINE)
    unit = short_dir / "androcond.service"
    unit.write_text(re.sub(r"^ExecStart=\S+", lambda _: f"ExecStart={_androcond_command()}", text,
                           flags=re.MULTILINE))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Unknown keys and bad values are only warnings (exit 0): none may name our unit.
    ours = [line for line in output.splitlines() if "androcond" in line]
    assert not ours, output
