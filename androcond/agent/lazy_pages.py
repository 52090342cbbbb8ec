"""The agent's handle on a post-copy restore's page keeper (page_keeper.py): start it and wait until
`criu lazy-pages` is ready, carry page-protocol bytes to and from it, learn how it ended, kill it.

The keeper runs in a session of its own, so a signal to the agent's process group does not reach it; its
process group id is its pid, which the outcome record keeps, so an agent restarted after a crash can kill it
once the container it guarded is gone (recovery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ..criu import compat as criu_compat
from ..logging import get_logger
from .errors import RestoreError
from .outcomes import ProcessIdentity
from .page_keeper import GO, KEEPER_LOG, LOG_NAME

log = get_logger(__name__)

CHUNK = 256 * 1024
READY_TIMEOUT_S = 30.0  # lazy-pages has read nothing yet: it only makes its socket
EXIT_TIMEOUT_S = 10.0


class PageKeeper:
    def __init__(self, proc: asyncio.subprocess.Process, images: Path, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proc = proc
        self.images = images
        self._reader = reader
        self._writer = writer
        identity = ProcessIdentity.of(proc.pid)
        self.identity = identity if identity is not None else ProcessIdentity(proc.pid, 0)
        self.started = False  # lazy-pages runs (go() returned)
        self._status_r: int | None = None  # lazy-pages' status pipe, until go() reads it

    @classmethod
    async def start(cls, images: Path) -> PageKeeper:
        """The keeper with `criu lazy-pages` ready for the restore (its socket made), or RestoreError."""
        keeper = await cls.spawn(images)
        await keeper.go()
        return keeper

    @classmethod
    async def spawn(cls, images: Path) -> PageKeeper:
        """The keeper, waiting (on its stdin) for :meth:`go` to start lazy-pages. Spawned when the target
        container is made, long before the commit: the interpreter's start (50 ms here, far more on a phone)
        stays out of the downtime. If the agent dies first, the keeper reads the end of its stdin and exits."""
        # It outlives this process by design, so it must not hold this process's stdout and stderr: whoever
        # watches them (a supervisor, the daemon's log pipe when the agent runs in it) would wait for it too.
        errors = await asyncio.to_thread((images / KEEPER_LOG).open, "ab")
        ours, theirs = socket.socketpair()
        status_r, status_w = os.pipe()
        try:
            # The keeper gets lazy-pages' end and a copy of ours, which it holds (page_keeper.py).
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "androcond.agent.page_keeper", str(images), str(theirs.fileno()),
                str(ours.fileno()), str(status_w), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=errors, pass_fds=(theirs.fileno(), ours.fileno(), status_w), start_new_session=True)
        except BaseException:
            os.close(status_r)
            ours.close()
            raise
        finally:
            os.close(status_w)
            theirs.close()
            errors.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=4 * CHUNK)
        keeper = cls(proc, images, reader, writer)
        keeper._status_r = status_r
        return keeper

    async def go(self) -> None:
        """Start lazy-pages and wait until it is ready for the restore (RestoreError otherwise)."""
        if self._status_r is None or self.proc.stdin is None:
            raise RestoreError("the page keeper was started already, or killed")
        status_r, self._status_r = self._status_r, None
        # Read on the loop (not in a thread that a timeout would leave blocked on the fd).
        loop = asyncio.get_running_loop()
        status = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(status),
                                                    os.fdopen(status_r, "rb", 0))
        try:
            self.proc.stdin.write(GO)
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self.proc.stdin.drain()
                ready = await status.read(1)
        except BaseException:
            await self.kill()
            raise
        finally:
            transport.close()
        if ready != b"\0":
            await self.kill()
            raise RestoreError(f"criu lazy-pages did not start{await self.log_reason()}")
        self.started = True
        log.info("lazy-pages ready", keeper_pid=self.proc.pid)

    async def feed(self, data: bytes) -> None:
        """Page-protocol bytes from the source's page server."""
        self._writer.write(data)
        await self._writer.drain()

    async def replies(self) -> AsyncIterator[bytes]:
        """Page-protocol bytes for the source's page server, until lazy-pages closes its socket."""
        while data := await self._reader.read(CHUNK):
            yield data

    async def wait(self) -> int:
        """The keeper's exit status (lazy-pages'); our end of the page socket closes with it."""
        code = await self.proc.wait()
        self._writer.close()
        return code

    async def kill(self) -> None:
        """The keeper and lazy-pages (its process group). Only once the guarded container is gone, or was
        never resumed: killing it under a running container leaves the missing pages reading as zeros."""
        if self._status_r is not None:
            os.close(self._status_r)
            self._status_r = None
        kill_group(self.identity)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self.proc.wait()
        self._writer.close()

    async def log_reason(self) -> str:
        """lazy-pages' own reason, as a suffix for an error message ("" once its log is gone)."""
        return await asyncio.to_thread(criu_compat.log_reason, self.images / LOG_NAME)


def kill_group(keeper: ProcessIdentity) -> bool:
    """SIGKILL the keeper's process group if that keeper still lives (its pid not reused); True if it did."""
    if keeper.pid <= 0 or ProcessIdentity.of(keeper.pid) != keeper:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(keeper.pid, signal.SIGKILL)
    return True
