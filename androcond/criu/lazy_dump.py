"""The flat freeze: a lazy dump, whose downtime does not grow with the container's memory.

`runc checkpoint --lazy-pages` writes every image but the memory (about 130 KB whatever the size, in 0.12–0.24 s
against seconds for a full dump of 1 GiB), signals on its status fd, then holds the tasks and serves their pages
from them. The tasks are then the only copy of the memory, so exactly once rests on what CRIU does at the end of
the page transfer (verified on this bed with runc 1.1.5 and CRIU 4.2.1, cgroup v1, docs/post-copy.md):

- a clean end of the connection, or a CLOSE, ends the dump *successfully*: the tasks are killed, whether or not
  every page arrived. Only :meth:`LazyDump.confirm` (the target's word that the container runs with all its
  memory) sends the CLOSE; lazy-pages' own CLOSE is answered here (page_protocol.CloseGate);
- a reset connection ends it as failed: CRIU lets the tasks go. The container was paused (the engine's freezer)
  before the dump, so they go back to *frozen*, not running, until the rollback's unpause — after the target's
  word that its copy is gone. Our socket has SO_LINGER 0: every other close, our process's death included,
  resets it.

CRIU's page server, when runc starts it, listens on every interface whatever address it is given (runc drops it;
seen with `ss`). It takes one connection, ours, made the moment the status byte comes: the port is open to the
network for that long. Under cgroup v2's freezer a reset dump puts the tasks back paused as under v1 (verified on
the arm64 device: Debian 13, CRIU 4.1.1).

CRIU killed while it serves would let the tasks run: it thaws the container's freezer once it has seized them.
So the freezer is frozen again as soon as the dump is ready (criu/freezer.py), and thawed only for the confirmed
end, right before the CLOSE on which CRIU kills them — after we have killed them ourselves, still frozen. A page
server that ends before that (CRIU gone) fails the transfer at once (ConnectionAbortedError from
:meth:`LazyDump.replies`), not at the paging deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import shutil
import signal
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ..errors import AndrocondError
from ..logging import get_logger
from .compat import host_criu_version, log_errors
from .freezer import Freezer, FreezerError
from .leftovers import LAZY_DUMP_WORK
from .page_protocol import (
    CLOSED_OK,
    STATUS,
    WIDE,
    CloseGate,
    HeaderRewriter,
    PageProtocolError,
    header_for,
    rewriter_for,
)
from .runc import RUNC_PATH

log = get_logger(__name__)

# How a freeze that left a lazy dump says so (Frozen.via, and the protocol's Frozen.via).
LAZY_DUMP = "lazy-dump"

CHUNK = 256 * 1024
STATUS_TIMEOUT_S = 120.0  # the dump of everything but the memory
CONFIRM_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0


class LazyDumpError(AndrocondError):
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LazyDump:
    """One lazy dump: the runc process that holds the tasks, and our connection to its page server."""

    def __init__(self, proc: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, work: Path, header: struct.Struct, *, freezer: Freezer) -> None:
        self.proc = proc
        self.freezer = freezer
        self._reader = reader
        self._writer = writer
        self.work = work
        self.header = header
        self.gate = CloseGate(header, mmap.PAGESIZE)
        self.rewriter: HeaderRewriter | None = None
        self.bytes_served = 0
        self.confirmed = False
        self.tasks_killed = False  # by the confirmed end, whether or not CRIU answered its CLOSE
        self.closed = False
        self._status = asyncio.Event()  # lazy-pages' CLOSE is held and due its answer
        # Runs between the confirmed end's thaw and its CLOSE: the bed's fault point there (faults.py).
        self.on_thawed: Callable[[], None] = lambda: None

    @classmethod
    async def start(cls, runc_root: Path, container_id: str, image_dir: Path) -> LazyDump:
        """Dump all but the memory into image_dir (the caller's: made and marked before the pause) and connect to
        the page server that holds the rest. The container must be paused already. On failure the dump is
        stopped (the tasks go back to frozen) and the images it wrote stay for the caller to remove."""
        runc = shutil.which("runc", path=RUNC_PATH)
        if runc is None:
            raise LazyDumpError("runc is not installed")
        header = header_for(await host_criu_version()) or WIDE
        work = image_dir / LAZY_DUMP_WORK
        await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        port = _free_port()
        status_r, status_w = os.pipe()
        try:
            with (work / "runc.out").open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    runc, "--root", str(runc_root), "checkpoint", "--lazy-pages", "--page-server",
                    f"127.0.0.1:{port}", "--status-fd", str(status_w), "--image-path", str(image_dir),
                    "--work-path", str(work), container_id, pass_fds=(status_w,), stdin=asyncio.subprocess.DEVNULL,
                    stdout=out, stderr=out, env={"PATH": RUNC_PATH}, start_new_session=True)
        except BaseException:
            os.close(status_r)
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        finally:
            os.close(status_w)
        try:
            try:
                async with asyncio.timeout(STATUS_TIMEOUT_S):
                    ready = await _read_status(status_r)
            except TimeoutError:
                ready = b""
            if not ready:
                raise LazyDumpError(await cls._failure(proc, work, "the lazy dump did not get ready"))
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=CHUNK * 4)
        except BaseException:
            await cls._stop(proc)
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        finally:
            os.close(status_r)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            freezer = await asyncio.to_thread(Freezer.hold, runc_root, container_id)
        except FreezerError as exc:
            writer.transport.abort()  # a reset: CRIU fails the dump and puts the tasks back paused
            why = await cls._failure(proc, work, f"the tasks could not be held in the freezer ({exc})")
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise LazyDumpError(why) from exc
        log.info("lazy dump ready: the tasks are held, their pages served from them", pid=proc.pid, port=port,
                 freezer=str(freezer.control))
        return cls(proc, reader, writer, work, header, freezer=freezer)

    @staticmethod
    async def _failure(proc: asyncio.subprocess.Process, work: Path, what: str) -> str:
        # runc ends by itself when the dump failed, CRIU having put the tasks back as they were (paused):
        # killing it there would let them run.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await proc.wait()
        await LazyDump._stop(proc)
        errors = await asyncio.to_thread(log_errors, work / "dump.log")
        out = await asyncio.to_thread(_tail, work / "runc.out")
        return f"{what} (runc exit {proc.returncode}): {'; '.join(errors) or out}"

    @staticmethod
    async def _stop(proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await proc.wait()

    def speak_with(self, client_criu: str) -> None:
        """The device's lazy-pages is of CRIU `client_criu`: rewrite its headers when they differ from ours."""
        self.rewriter = rewriter_for(client_criu, self.header, mmap.PAGESIZE)

    # --- a PageSource, for the lazy commit ---------------------------------------------------------------
    async def feed(self, data: bytes) -> None:
        try:
            if self.rewriter is not None:
                data = self.rewriter.requests(data)
            data = self.gate.requests(data)
        except PageProtocolError as exc:
            log.error("the page transfer cannot go on; resetting the lazy dump", error=str(exc))
            self._reset()
            raise ConnectionResetError(str(exc)) from exc
        if data:
            self._writer.write(data)
            await self._writer.drain()
        if self.gate.status_due:
            self._status.set()

    async def replies(self) -> AsyncIterator[bytes]:
        """The page server's replies, and the answer to lazy-pages' CLOSE once every reply before it passed."""
        read: asyncio.Task[bytes] | None = None
        held: asyncio.Task[bool] | None = None
        try:
            while True:
                if self.gate.status_due:
                    yield self._out(CLOSED_OK)
                    return
                read = read or asyncio.ensure_future(self._reader.read(CHUNK))
                held = held or asyncio.ensure_future(self._status.wait())
                await asyncio.wait([read, held], return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    continue  # the CLOSE came: answered above, if nothing is left to pass before it
                data, read = read.result(), None
                if not data:
                    # Before lazy-pages' CLOSE (answered above), CRIU ends its connection only by dying: the
                    # tasks stay frozen (the freezer's hold), and the target will get no more pages.
                    raise ConnectionAbortedError("the lazy dump's page server ended before the target had every page")
                self.bytes_served += len(data)
                try:
                    self.gate.replies(data)
                except PageProtocolError as exc:
                    log.error("the page server's replies cannot be followed; resetting it", error=str(exc))
                    self._reset()
                    raise ConnectionResetError(str(exc)) from exc
                yield self._out(data)
        finally:
            for task in (read, held):
                if task is not None and not task.done():
                    task.cancel()

    def _out(self, data: bytes) -> bytes:
        if self.rewriter is None:
            return data
        try:
            return self.rewriter.replies(data)
        except PageProtocolError as exc:
            self._reset()
            raise ConnectionResetError(str(exc)) from exc

    # --- the end -----------------------------------------------------------------------------------------
    async def confirm(self) -> None:
        """The target runs the container with all its memory: end the dump successfully (the tasks die). Raises
        LazyDumpError when the dump does not end well; the target's copy stands anyway."""
        if self.gate.close_held is None:
            raise LazyDumpError("the device's lazy-pages never said it had every page")
        try:
            # CRIU kills the tasks on the CLOSE, and under cgroup v1 a frozen task cannot die: so they are
            # thawed, but killed first, so that CRIU's death before its own kill cannot let them run.
            killed = await asyncio.to_thread(self.freezer.kill_and_thaw)
        except FreezerError as exc:
            raise LazyDumpError(f"the tasks could not be ended for the dump's end: {exc}") from exc
        self.tasks_killed = True
        log.debug("the source's tasks killed while frozen, then thawed", processes=killed)
        self.on_thawed()
        async with asyncio.timeout(CONFIRM_TIMEOUT_S):
            self._writer.write(self.gate.close_held)
            try:
                await self._writer.drain()
                answer = await self._reader.readexactly(STATUS.size)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                # CRIU gone before its answer: the tasks died anyway (killed above, while frozen).
                raise LazyDumpError(await self._failure(self.proc, self.work, "the lazy dump ended before its "
                                                        f"answer to the CLOSE ({exc!r})")) from exc
            self.confirmed = True
            # From here a clean end: no more reset at close (CRIU reads once more after its answer, and a reset
            # there fails the dump), our end first, then CRIU's.
            sock = self._writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 0, 0))
            self._writer.write_eof()
            await self._reader.read()
            self._writer.close()
            await self.proc.wait()
        if STATUS.unpack(answer)[0] != 0 or self.proc.returncode != 0:
            raise LazyDumpError(await self._failure(self.proc, self.work, "the lazy dump ended badly"))
        log.info("the lazy dump ended: the source's tasks are gone, the device has every page")

    def kill_dumper(self) -> None:
        """SIGKILL runc and the CRIU it started (one process group), as the OOM killer might."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _reset(self) -> None:
        self._writer.transport.abort()  # SO_LINGER 0: a reset, which CRIU takes as the transfer failing

    async def close(self) -> None:
        """Without a confirmation: reset the connection, so that CRIU lets the tasks go back to frozen; wait
        for runc to end. Its work directory goes (its errors to our log first). Once; again, nothing."""
        if self.closed:
            return
        self.closed = True
        if not self.confirmed:
            self._reset()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self.proc.wait()
        if self.proc.returncode is None:
            log.error("the lazy dump did not end after its connection was reset; killing it")
            await self._stop(self.proc)
        if not self.confirmed:
            errors = await asyncio.to_thread(log_errors, self.work / "dump.log")
            log.info("the lazy dump ended unconfirmed: " + ("the source's tasks were killed at its end"
                     if self.tasks_killed else "the source's tasks are held frozen"),
                     runc_exit=self.proc.returncode, errors=errors)
        await asyncio.to_thread(shutil.rmtree, self.work, True)


async def _read_status(fd: int) -> bytes:
    """The status byte, or b"" once runc has ended without it (its end of the pipe closes with it)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            try:
                ready.set_result(os.read(fd, 1))
            except OSError:
                ready.set_result(b"")

    loop.add_reader(fd, readable)
    try:
        return await ready
    finally:
        loop.remove_reader(fd)
