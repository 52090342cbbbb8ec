"""One daemon per Docker engine on a host: two daemons following one engine would both act on the same
label and freeze the same container twice.

The lock is an flock on a file named after the engine (its socket's real path, or its URL), in a directory
every daemon on the host shares. The kernel drops it when the holder dies, even by SIGKILL, so a crash never
leaves a stale lock; the file says who holds it, for the refusal's message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from ..errors import ConfigError

LOCK_DIR = Path("/run/androcond/engines")


class EngineTaken(ConfigError):
    """Another daemon on this host already follows this engine (exit 2: a setup error, not a failure)."""


def engine_identity(docker_host: str) -> str:
    """The same engine spelled two ways (/var/run is a link to /run) must be one lock."""
    if docker_host.startswith("unix://"):
        return "unix://" + os.path.realpath(docker_host[len("unix://"):])
    return docker_host.rstrip("/")


class EngineLock:
    def __init__(self, docker_host: str, directory: Path = LOCK_DIR) -> None:
        self.identity = engine_identity(docker_host)
        digest = hashlib.sha256(self.identity.encode()).hexdigest()[:24]
        self.path = directory / f"{digest}.lock"
        self._fd: int | None = None

    def acquire(self, config: Path | None, api: str) -> None:
        """Take the lock or raise EngineTaken naming the daemon that holds it. Start-up only (a few
        syscalls on a local file), so it runs before the event loop has anything else to do."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise EngineTaken(f"another androcond daemon already follows the Docker engine at {self.identity} "
                              f"({holder}); one daemon per engine — stop it first") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "config": str(config or "built-in defaults"), "api": api,
                                 "engine": self.identity, "since": time.time()}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "a daemon that is still starting"
    return f"pid {info['pid']}, config {info.get('config')}, API {info.get('api')}"
