"""Small process helpers for the test bed: commands with clear errors, owned daemons, readiness waits."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class TestBedError(RuntimeError):
    """The test bed could not be brought up or down; the message says which part and why."""

    __test__ = False


def run(cmd: Sequence[str], *, check: bool = True, input_bytes: bytes | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(list(cmd), capture_output=True, input=input_bytes, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise TestBedError(f"{' '.join(cmd)} exited {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()[-2000:]}")
    return result


def start_daemon(cmd: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Start a long-running process in its own session, output to log_path; return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return _not_zombie(pid)
    return done == 0


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stop_pid(pid: int, *, timeout: float = 20.0, what: str = "process") -> None:
    """SIGTERM, wait, then SIGKILL a process we started."""
    if not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: not alive(pid), timeout=timeout, what=f"{what} (pid {pid}) to exit")
    except TestBedError:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), timeout=5, what=f"{what} (pid {pid}) to die")


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05,
             diagnose: Callable[[], str] | None = None) -> None:
    """Poll a readiness condition until it holds; a clear error naming what never became ready."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            detail = f"\n{diagnose()}" if diagnose is not None else ""
            raise TestBedError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
