"""The source's end of post-copy: CRIU's page server, serving the lazy pages of the finished dump.

`criu page-server --lazy-pages -D DUMP --ps-socket FD` answers the device's `criu lazy-pages` from the dump on
disk (docs/post-copy.md): the tasks are not kept frozen for it, and the same dump stays the rollback's source.
Its socket is one end of a socketpair, whose other end is ours: the bytes travel as Pages frames over the
migration's ssh channel, so neither CRIU listens on any network address (CRIU's own page server binds every
interface whatever address it is given). When the device's CRIU speaks another header than ours
(page_protocol.py), the headers are rewritten on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ..errors import AndrocondError
from ..logging import get_logger
from .compat import CRIU_PATH, host_criu_version, log_errors
from .page_protocol import HeaderRewriter, PageProtocolError, header_for, rewriter_for

log = get_logger(__name__)

CHUNK = 256 * 1024
EXIT_TIMEOUT_S = 5.0
LOG_NAME = "page-server.log"


class PageServerError(AndrocondError):
    pass


class PageServer:
    def __init__(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, work: Path, rewriter: HeaderRewriter | None = None) -> None:
        self.proc = proc
        self.rewriter = rewriter
        self._reader = reader
        self._writer = writer
        self.work = work
        self.bytes_served = 0

    @classmethod
    async def start(cls, dump: Path, client_criu: str = "", parent: Path | None = None) -> PageServer:
        """`client_criu`: the version of the device's CRIU, whose lazy-pages will ask ("": as ours). Its work
        directory goes under `parent` (the migration's workspace, so a daemon killed meanwhile leaves it where
        its restart sweeps), else in the system's temporary directory."""
        criu = shutil.which("criu", path=CRIU_PATH)
        if criu is None:
            raise PageServerError("criu is not installed")
        rewriter = rewriter_for(client_criu, header_for(await host_criu_version()), mmap.PAGESIZE)
        if parent is not None:
            await asyncio.to_thread(parent.mkdir, parents=True, exist_ok=True)
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="androcond-pages-", dir=parent))
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                criu, "page-server", "--lazy-pages", "-D", str(dump), "-W", str(work), "--ps-socket",
                str(theirs.fileno()), "-o", LOG_NAME, "-v2", pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            ours.close()
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=CHUNK * 4)
        log.info("page server started", pid=proc.pid, dump=str(dump),
                 rewriting=f"{rewriter.client.size}-byte headers" if rewriter else "no")
        return cls(proc, reader, writer, work, rewriter)

    async def feed(self, data: bytes) -> None:
        """A request of the device's lazy-pages. A stream that cannot be rewritten ends the page server
        (ConnectionResetError): the device's lazy-pages fails, and the move rolls back."""
        if self.rewriter is not None:
            data = self._rewritten(self.rewriter.requests, data)
        self._writer.write(data)
        await self._writer.drain()

    async def replies(self) -> AsyncIterator[bytes]:
        """What the page server answers, until it closes its socket. It does so after lazy-pages' CLOSE and exits
        0; one that ends otherwise (killed, or failed) raises ConnectionAbortedError, so the move fails now
        rather than leaving the device waiting for its pages until the paging deadline."""
        while data := await self._reader.read(CHUNK):
            self.bytes_served += len(data)
            if self.rewriter is not None:
                data = self._rewritten(self.rewriter.replies, data)
            yield data
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self.proc.wait()
        if self.proc.returncode:
            errors = await asyncio.to_thread(log_errors, self.work / LOG_NAME)
            raise ConnectionAbortedError(f"the page server ended with status {self.proc.returncode} before the "
                                         f"device had every page{': ' + '; '.join(errors) if errors else ''}")

    def _rewritten(self, rewrite: Callable[[bytes], bytes], data: bytes) -> bytes:
        try:
            return rewrite(data)
        except PageProtocolError as exc:
            log.error("the page transfer cannot be rewritten; stopping the page server", error=str(exc))
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            raise ConnectionResetError(str(exc)) from exc

    async def close(self) -> None:
        """Stop serving: the page server, our socket, its work directory (its log goes to ours first)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self.proc.wait()
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
        errors = await asyncio.to_thread(log_errors, self.work / LOG_NAME)
        if errors:
            log.warning("page server errors", errors=errors)
        await asyncio.to_thread(shutil.rmtree, self.work, True)

