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
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ..logging import get_logger
from .errors import RestoreError
from .outcomes import ProcessIdentity
from .page_keeper import CHUNK, LOG_NAME

log = get_logger(__name__)

READY_TIMEOUT_S = 30.0  # lazy-pages has read nothing yet: it only makes its socket
EXIT_TIMEOUT_S = 10.0


class PageKeeper:
    def __init__(self, proc: asyncio.subprocess.Process, images: Path) -> None:
        self.proc = proc
        self.images = images
        identity = ProcessIdentity.of(proc.pid)
        self.identity = identity if identity is not None else ProcessIdentity(proc.pid, 0)

    @classmethod
    async def start(cls, images: Path) -> PageKeeper:
        """The keeper with `criu lazy-pages` ready for the restore (its socket made), or RestoreError."""
        status_r, status_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "androcond.agent.page_keeper", str(images), str(status_w),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=(status_w,),
                start_new_session=True)
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        keeper = cls(proc, images)
        # Read on the loop (not in a thread that a timeout would leave blocked on the fd).
        loop = asyncio.get_running_loop()
        status = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(status),
                                                    os.fdopen(status_r, "rb", 0))
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                ready = await status.read(1)
        except BaseException:
            await keeper.kill()
            raise
        finally:
            transport.close()
        if ready != b"\0":
            await keeper.kill()
            raise RestoreError(f"criu lazy-pages did not start{keeper.log_excerpt()}")
        log.info("lazy-pages ready", keeper_pid=proc.pid)
        return keeper

    async def feed(self, data: bytes) -> None:
        """Page-protocol bytes from the source's page server."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def replies(self) -> AsyncIterator[bytes]:
        """Page-protocol bytes for the source's page server, until lazy-pages closes its socket."""
        assert self.proc.stdout is not None
        while data := await self.proc.stdout.read(CHUNK):
            yield data

    async def wait(self) -> int:
        return await self.proc.wait()

    async def kill(self) -> None:
        """The keeper and lazy-pages (its process group). Only once the guarded container is gone, or was
        never resumed: killing it under a running container leaves the missing pages reading as zeros."""
        kill_group(self.identity)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self.proc.wait()

    def log_excerpt(self, lines: int = 3) -> str:
        try:
            text = (self.images / LOG_NAME).read_text(errors="replace")
        except OSError:
            return ""
        errors = [line.strip()[:300] for line in text.splitlines() if "Error" in line][:lines]
        return f" (CRIU: {' | '.join(errors)})" if errors else ""


def kill_group(keeper: ProcessIdentity) -> bool:
    """SIGKILL the keeper's process group if that keeper still lives (its pid not reused); True if it did."""
    if keeper.pid <= 0 or ProcessIdentity.of(keeper.pid) != keeper:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(keeper.pid, signal.SIGKILL)
    return True
