"""The daemon's side of the device link: one asyncssh connection per migration, one channel, our framed
protocol (androcond/protocol/protocol.proto).

Host keys are always checked against the device's known_hosts; key authentication only. Every phase has its
own timeout. Files stream with a SHA-256 each, a bounded window of files in flight awaiting the agent's
verdict, and the channel's drain() for backpressure, so a slow link slows the producer, never memory. Chunks
are compressed with the codec both ends have where it pays (compress.py), in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, Self, TypeVar

import asyncssh

from ..build import build_version
from ..logging import get_logger
from ..protocol import compression, ssh
from ..protocol import protocol_pb2 as pb
from ..protocol.wire import (
    CHUNK,
    PROTOCOL_VERSION,
    ChannelClosed,
    FrameReader,
    FrameWriter,
    WireError,
    body,
    read_frame,
    write_frame,
)
from .compress import WORTH, ChunkPolicy, policy_for
from .payload import OutgoingFile, Progress, ProgressCallback, read_file_chunks
from .ssh import (
    AgentRefused,
    Endpoint,
    FileRejected,
    PhaseTimeouts,
    StreamStalled,
    TransportError,
    connect,
    within_phase,
)

log = get_logger(__name__)
T = TypeVar("T")


# File data sent but not yet stored by the agent (its Stored frames) is kept below this: what bounds the
# agent's memory when its disk is slower than the link. asyncssh 2.24 reopens a paused channel's full window
# on the first delivery after a resume, with data still buffered, so the channel window alone let the agent
# buffer hundreds of MiB (measured: 110 MiB in the channel's buffer for a 512 MiB file).
UNSTORED_LIMIT = 32 * 1024 * 1024
DEFAULT_TIMEOUTS = PhaseTimeouts()
CLOSE_TIMEOUT_S = 5.0
# A send that finds the channel closed waits this long for the reader to deliver why (the agent's error or
# rejection, read just before the close): the agent's reason is what the user should see.
SEND_FAILURE_GRACE_S = 2.0
# Pages go without the agent's Stored reports: only the channel's window (8 MiB) takes them at once.
PAGES_WARMUP = 8 * 1024 * 1024
# Below this a chunk is compressed on the loop: a thread's round trip would cost more than the work.
INLINE_COMPRESS = 64 * 1024


async def _each(files: Iterable[OutgoingFile] | AsyncIterable[OutgoingFile]) -> AsyncIterator[OutgoingFile]:
    if isinstance(files, AsyncIterable):
        async for spec in files:
            yield spec
    else:
        for spec in files:
            yield spec


class PageSource(Protocol):
    """The source's page server as post-copy needs it (page_server.PageServer)."""

    async def feed(self, data: bytes) -> None: ...

    def replies(self) -> AsyncIterator[bytes]: ...


# Frames read off the link and not yet taken by their consumer: bounded, so that files the agent sends (the way
# back) wait in the channel's window, not in our memory, when we store them slower than the link brings them.
REPLIES_LIMIT = 64


@dataclass
class _Pending:
    acks: dict[int, asyncio.Future[pb.FileAck]] = field(default_factory=dict)
    replies: asyncio.Queue[pb.Frame] = field(default_factory=lambda: asyncio.Queue(REPLIES_LIMIT))


class Carrier(Protocol):
    """What carries the channel: an ssh connection, or for the host's own engine a local pair of sockets."""

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class ChannelWriter(FrameWriter, Protocol):
    def write_eof(self) -> None: ...


class AgentConnection:
    """An open channel to the agent, after the hello exchange."""

    def __init__(self, conn: Carrier, writer: ChannelWriter, reader: FrameReader, stderr: AsyncIterable[bytes],
                 timeouts: PhaseTimeouts, *,
                 compress: compression.CompressSetting = "auto") -> None:
        self._conn = conn
        self._writer = writer
        self._reader = reader
        self._stderr = stderr
        self.timeouts = timeouts
        self.hello = pb.AgentHello()
        self._pending = _Pending()
        self._failure: BaseException | None = None
        self._failed = asyncio.Event()  # set with _failure
        self._next_stream = 1
        self._tasks: list[asyncio.Task[None]] = []
        self._data_sent = 0  # file-data bytes sent in this session
        self._data_stored = 0  # of those, what the agent reported stored
        self._stored_news = asyncio.Event()  # set on each Stored frame and on failure
        self._pages: PageSource | None = None  # post-copy: where the device's page requests go
        self._pages_gone = False  # the page server took no more: later requests are dropped
        # Post-copy back: the source agent's page replies, until its consumer takes them (bounded, like replies).
        self._pages_back: asyncio.Queue[bytes | BaseException] | None = None
        self.compress = compress  # the device's setting
        self.codec = compression.NONE  # what the hello chose for this link
        self.pages_wire_bytes = 0  # post-copy's pages as they went on the wire (compressed or not)

    # --- connection ------------------------------------------------------------------------------------
    @classmethod
    async def open(cls, endpoint: Endpoint, timeouts: PhaseTimeouts = DEFAULT_TIMEOUTS,
                   compress: compression.CompressSetting = "auto") -> Self:
        conn = await connect(endpoint, timeouts)
        try:
            try:
                writer, reader, stderr = await within_phase("connect", timeouts.connect, conn.open_session(
                    endpoint.agent_command, encoding=None, window=ssh.CHANNEL_WINDOW, max_pktsize=ssh.CHANNEL_PACKET))
            except (asyncssh.Error, OSError) as exc:
                raise TransportError(f"the device refused a session for the agent: {exc}") from exc
            return await cls.over(conn, writer, reader, stderr, timeouts=timeouts, compress=compress)
        except BaseException:
            conn.close()
            raise

    @classmethod
    async def over(cls, conn: Carrier, writer: ChannelWriter, reader: FrameReader, stderr: AsyncIterable[bytes], *,
                   timeouts: PhaseTimeouts = DEFAULT_TIMEOUTS,
                   compress: compression.CompressSetting = "auto") -> Self:
        """The link over a channel already open (its carrier is closed with it), after the hello."""
        self = cls(conn, writer, reader, stderr, timeouts, compress=compress)
        await self._hello()
        return self

    async def _hello(self) -> None:
        ours = await asyncio.to_thread(build_version)
        hello = pb.Frame(client_hello=pb.ClientHello(protocol_version=PROTOCOL_VERSION, client_version=ours,
                                                     codecs=compression.available()))
        await within_phase("hello", self.timeouts.hello, self._send(hello))
        frame = await within_phase("hello", self.timeouts.hello, self._read())
        if body(frame) == "error":
            raise AgentRefused.from_frame(frame.error, "agent refused the hello: ")
        if body(frame) != "agent_hello":
            raise TransportError(f"expected agent_hello, got {body(frame)}")
        if frame.agent_hello.protocol_version != PROTOCOL_VERSION:
            raise TransportError(f"agent speaks protocol {frame.agent_hello.protocol_version}, "
                                 f"we speak {PROTOCOL_VERSION}")
        self.hello = frame.agent_hello
        if self.hello.agent_version != ours:
            log.warning("the agent is another build than this daemon (androcond devices setup upgrades it)",
                        agent=self.hello.agent_version, daemon=ours)
        # An agent before compression names no codec: it gets every chunk as it is.
        choice = compression.choose(self.compress, compression.available(), tuple(self.hello.codecs))
        if choice.why:
            log.warning("compression not as configured", why=choice.why)
        self.codec = choice.codec
        self._start_tasks()

    def _start_tasks(self) -> None:
        """Owned tasks, ended by close(): the reader dispatches replies (and fails the link on any error of
        its own); the stderr relay keeps the agent's logs flowing."""
        self._tasks = [asyncio.create_task(self._read_loop(), name="agent-reader"),
                       asyncio.create_task(self._relay_stderr(), name="agent-stderr")]

    async def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError, asyncssh.Error):
            self._writer.write_eof()
        self._conn.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # closing is best effort; never a reason to hang
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._conn.wait_closed()

    async def __aenter__(self) -> AgentConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _read(self) -> pb.Frame:
        try:
            return await read_frame(self._reader)
        except ChannelClosed as exc:
            raise TransportError("the agent closed the channel") from exc
        except WireError as exc:
            raise TransportError(f"link to the agent broke: {exc}") from exc
        except (asyncssh.Error, OSError, ConnectionError) as exc:
            raise TransportError(f"link to the agent broke: {exc}") from exc

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self._read()
                kind = body(frame)
                if kind == "file_ack":
                    future = self._pending.acks.pop(frame.file_ack.stream_id, None)
                    if future is not None and not future.done():
                        future.set_result(frame.file_ack)
                    if not frame.file_ack.ok:
                        # The agent has discarded the migration: stop sending at once.
                        self._fail(FileRejected(f"agent rejected a file: {frame.file_ack.error}"))
                elif kind == "stored":
                    self._data_stored = max(self._data_stored, frame.stored.bytes)
                    self._stored_news.set()
                elif kind == "pages":
                    await self._pages_in(frame.pages)
                elif kind == "error":
                    raise AgentRefused.from_frame(frame.error)
                else:
                    await self._pending.replies.put(frame)
        except asyncio.CancelledError:
            self._fail(TransportError("connection closed"))
            raise
        except TransportError as exc:
            self._fail(exc)
        except Exception as exc:
            # A bug of ours or a library's: as in asyncssh, a failed task fails its connection — every waiter
            # wakes now with the reason, instead of sleeping until its phase deadline (an hour while paging).
            log.error("the link's reader failed; closing the link", error=f"{exc.__class__.__name__}: {exc}",
                      exc_info=exc)
            self._fail(TransportError(f"the link's reader failed: {exc.__class__.__name__}: {exc}"))
            self._conn.close()  # a sender blocked on the channel wakes too

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            self._failed.set()
        for future in self._pending.acks.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.acks.clear()
        # Wake a waiter on replies: it re-raises the failure (what it has not read yet is moot); and one
        # waiting for the agent to store.
        replies = self._pending.replies
        while replies.full():
            replies.get_nowait()
        replies.put_nowait(pb.Frame(error=pb.Error(message=str(exc))))
        if self._pages_back is not None:
            while self._pages_back.full():
                self._pages_back.get_nowait()
            self._pages_back.put_nowait(exc)
        self._stored_news.set()

    async def _relay_stderr(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError, ConnectionError):
            async for line in self._stderr:
                log.debug("agent", line=line.decode(errors="replace").rstrip())

    async def _request(self, frame: pb.Frame, phase: str, seconds: float, expected: str) -> pb.Frame:
        """Send a request and await its reply, both under the phase's deadline (an agent that stopped
        reading blocks the send as surely as one that stopped answering blocks the reply)."""
        return await within_phase(phase, seconds, self._send_and_reply(frame, phase, expected))

    async def _send_and_reply(self, request: pb.Frame, phase: str, expected: str) -> pb.Frame:
        await self._send(request)
        return await self._reply(phase, expected)

    async def _reply(self, phase: str, expected: str) -> pb.Frame:
        frame = await self._pending.replies.get()
        if body(frame) == "error":
            if isinstance(self._failure, TransportError):
                raise self._failure
            raise AgentRefused.from_frame(frame.error)
        if body(frame) != expected:
            raise TransportError(f"expected {expected} in phase {phase!r}, got {body(frame)}")
        return frame

    async def _send(self, frame: pb.Frame) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            await write_frame(self._writer, frame)
        except (asyncssh.Error, OSError, ConnectionError) as exc:
            # The agent may have said why it closed (a rejected file) in what the reader has yet to read.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SEND_FAILURE_GRACE_S):
                    await self._failed.wait()
            if isinstance(self._failure, (FileRejected, AgentRefused)):
                raise self._failure from exc
            raise TransportError(f"link to the agent broke while sending: {exc}") from exc

    async def _send_within(self, frame: pb.Frame, idle: float) -> None:
        """Send one frame, failing if the link takes none of it for `idle` seconds (no progress)."""
        try:
            async with asyncio.timeout(idle):
                await self._send(frame)
        except TimeoutError as exc:
            raise self._stalled(idle, "the link took no data: the agent stopped reading") from exc

    async def _until_stored(self, size: int, idle: float) -> None:
        """Wait until `size` more bytes keep the unstored data under UNSTORED_LIMIT (an agent that reports what
        it stored; older ones are bounded by the channel alone), failing if it stores nothing for `idle` s."""
        if not self.hello.reports_stored:
            return
        while self._data_sent + size - self._data_stored > UNSTORED_LIMIT:
            if self._failure is not None:
                raise self._failure
            self._stored_news.clear()
            try:
                async with asyncio.timeout(idle):
                    await self._stored_news.wait()
            except TimeoutError as exc:
                raise self._stalled(idle, "the agent stored no data: its disk or its image load is stuck") from exc

    # --- protocol ----------------------------------------------------------------------------------------
    async def begin(self, begin: pb.Begin) -> pb.BeginAck:
        return (await self._request(pb.Frame(begin=begin), "begin", self.timeouts.begin, "begin_ack")).begin_ack

    async def send_files(self, files: Iterable[OutgoingFile] | AsyncIterable[OutgoingFile], *, window: int = 8,
                         progress: ProgressCallback | None = None) -> Progress:
        """Stream files in order; up to `window` of them may await the agent's digest verdict at once. `files`
        may come as they are known (a relay): each is sent whole before the next is asked for.

        Every wait has a deadline: a frame the link does not take, a window slot no verdict frees, or a
        stream that yields nothing for `stream_idle` seconds ends the stream with StreamStalled."""
        idle = self.timeouts.stream_idle
        state = Progress()
        slots = asyncio.Semaphore(window)
        policy = policy_for(self.compress, self.codec, UNSTORED_LIMIT)  # one per stream: its measures are this stream's
        acks: list[tuple[OutgoingFile, asyncio.Future[pb.FileAck]]] = []
        async for spec in _each(files):
            try:
                async with asyncio.timeout(idle):
                    await slots.acquire()  # a link failure fails every pending ack, which frees the slots
            except TimeoutError as exc:
                raise self._stalled(idle, "no verdict from the agent on the files in flight") from exc
            ack = await self._send_one(spec, state, progress, policy)
            ack.add_done_callback(lambda _f: slots.release())
            acks.append((spec, ack))
        for spec, ack in acks:
            limit = self.timeouts.image_ack if spec.destination == pb.IMAGE_TAR else self.timeouts.file_ack
            verdict = await within_phase("file_ack", limit, asyncio.shield(ack))
            if not verdict.ok:
                raise FileRejected(f"agent rejected a file: {verdict.error}")
            state.files_verified += 1
            if progress is not None:
                progress(state)
        return state

    def _stalled(self, idle: float, what: str) -> StreamStalled:
        stalled = StreamStalled("stream", idle, what)
        self._fail(stalled)
        return stalled

    async def _send_one(self, spec: OutgoingFile, state: Progress, progress: ProgressCallback | None,
                        policy: ChunkPolicy) -> asyncio.Future[pb.FileAck]:
        idle = self.timeouts.stream_idle
        stream_id = self._next_stream
        self._next_stream += 1
        ack: asyncio.Future[pb.FileAck] = asyncio.get_running_loop().create_future()
        # When the link fails, acks nobody waits for any more still count as seen (no "never retrieved").
        ack.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending.acks[stream_id] = ack
        await self._send_within(pb.Frame(file_start=pb.FileStart(
            stream_id=stream_id, destination=spec.destination, path=spec.path, volume=spec.volume,  # type: ignore[arg-type]
            kind=spec.kind, size=spec.size, mode=spec.mode, link_target=spec.link_target,  # type: ignore[arg-type]
            uid=spec.uid, gid=spec.gid, mtime_ns=spec.mtime_ns, opaque=spec.opaque)), idle)
        # A relayed file's digest is its origin's (spec.vouched): nothing to hash here.
        vouched = spec.vouched
        digest = hashlib.sha256() if vouched is None else None
        if spec.kind == pb.REGULAR:
            blocks = aiter(spec.stream() if spec.stream is not None else read_file_chunks(spec))
            while True:
                try:
                    async with asyncio.timeout(idle):  # a source (e.g. `docker save`) that stops yielding
                        block = await anext(blocks)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise self._stalled(idle, f"{spec.path} yielded no data") from exc
                for start in range(0, len(block), CHUNK):  # a stream may hand out blocks above the frame limit
                    chunk = block[start:start + CHUNK]
                    # Hash in a worker thread (hashlib releases the GIL) while the chunk is compressed and goes
                    # out; the digest is over the raw bytes, as the agent checks it after decompressing.
                    hashing = asyncio.ensure_future(asyncio.to_thread(digest.update, chunk)) if digest else None
                    try:
                        wire, codec, compress_s = await self._encode(policy, chunk)
                        sending = time.perf_counter()
                        # Counted raw on both ends (the agent's Stored too): the bound is on what the agent
                        # will hold once decompressed.
                        await self._until_stored(len(chunk), idle)
                        await self._send_within(pb.Frame(file_data=pb.FileData(
                            stream_id=stream_id, data=wire, codec=codec, raw_size=len(chunk) if codec else 0)), idle)
                        link_s = time.perf_counter() - sending
                    finally:
                        if hashing is not None:
                            await hashing
                    policy.record(raw=len(chunk), wire=len(wire), compress_s=compress_s, link_s=link_s)
                    self._data_sent += len(chunk)
                    state.bytes_sent += len(chunk)
                    state.wire_bytes += len(wire)
                    if progress is not None:
                        progress(state)
        if vouched is not None:
            sha256 = vouched()
        else:
            assert digest is not None
            sha256 = digest.digest()
        await self._send_within(pb.Frame(file_end=pb.FileEnd(stream_id=stream_id, sha256=sha256)), idle)
        state.files_sent += 1
        return ack

    @staticmethod
    async def _encode(policy: ChunkPolicy, chunk: bytes) -> tuple[bytes, str, float]:
        """The chunk as it goes on the wire, its codec ("" when raw) and the seconds compressing took."""
        if not policy.wants():
            return chunk, "", 0.0
        started = time.perf_counter()
        if len(chunk) < INLINE_COMPRESS:
            packed = compression.encode(policy.codec, chunk, worth=WORTH)
        else:
            packed = await asyncio.to_thread(compression.encode, policy.codec, chunk, worth=WORTH)
        seconds = time.perf_counter() - started
        return (chunk, "", seconds) if packed is None else (packed, policy.codec, seconds)

    async def commit(self, file_count: int = 0) -> pb.Outcome:
        frame = pb.Frame(commit=pb.Commit(file_count=file_count))
        return (await self._request(frame, "commit", self.timeouts.commit, "outcome")).outcome

    async def commit_lazy(self, file_count: int, pages: PageSource,
                          on_resumed: Callable[[pb.Outcome], Awaitable[None]], paging_s: float) -> pb.Outcome:
        """Post-copy: commit while `pages` answers the device's page requests over this channel. The device
        answers twice: "paging" once the container runs (`on_resumed` is called), then "running" once the last
        page has arrived, under the `paging` deadline. Any other first answer is returned as it is."""
        self._pages = pages
        self._tasks.append(asyncio.create_task(self._page_replies(pages), name="page-replies"))
        first = await self.commit(file_count)
        if first.state != pb.OUTCOME_PAGING:
            return first
        await on_resumed(first)
        return (await within_phase("paging", paging_s, self._reply("paging", "outcome"))).outcome

    async def _pages_in(self, pages: pb.Pages) -> None:
        if self._pages_back is not None:  # this agent is the source: its page server's replies
            if pages.codec:
                raise TransportError("the source agent sent compressed pages, which it was not asked for")
            await self._pages_back.put(pages.data)
            return
        await self._page_request(pages.data)

    async def _page_request(self, data: bytes) -> None:
        if self._pages is None:
            raise TransportError("the agent sent pages outside a post-copy commit")
        if self._pages_gone:
            return
        try:
            await self._pages.feed(data)
        except (OSError, ConnectionError) as exc:
            # The page server is gone: the device's lazy-pages fails, and the agent says so in its outcome.
            log.warning("the page server took no more requests", error=str(exc))
            self._pages_gone = True

    async def _page_replies(self, pages: PageSource) -> None:
        # Pages compress like files (an interpreter's heap, 3×): the same codec and per-stream policy, to an
        # agent that decompresses them. On a link faster than the compressor, `auto` ends up sending them raw.
        codec = self.codec if self.hello.compressed_pages else compression.NONE
        policy = policy_for(self.compress, codec, PAGES_WARMUP)
        try:
            async for data in pages.replies():
                wire, used, compress_s = await self._encode(policy, data)
                sending = time.perf_counter()
                await self._send(pb.Frame(pages=pb.Pages(data=wire, codec=used, raw_size=len(data) if used else 0)))
                policy.record(raw=len(data), wire=len(wire), compress_s=compress_s,
                              link_s=time.perf_counter() - sending)
                self.pages_wire_bytes += len(wire)
        except TransportError as exc:
            self._fail(exc)
        except (OSError, ConnectionError) as exc:
            # The source can serve no more (its CRIU gone, or a stream that could not be followed): the target
            # would wait for its pages until the paging deadline, so the commit fails now and the move rolls back.
            log.warning("the page server stopped answering", error=str(exc))
            self._fail(TransportError(f"the page server stopped answering: {exc}"))

    async def abort(self, reason: str) -> pb.Outcome:
        return (await self._request(pb.Frame(abort=pb.Abort(reason=reason)), "abort", self.timeouts.query,
                                    "outcome")).outcome

    # --- the agent as the source (the way back) ---------------------------------------------------------
    async def source_open(self, request: pb.SourceOpen) -> pb.SourceFacts:
        return (await self._request(pb.Frame(source_open=request), "source", self.timeouts.begin,
                                    "source_facts")).source_facts

    async def cross_prepare(self, target_isa: str, *, notify: bool, seconds: float) -> pb.CrossReady:
        """Across ISAs back: the agent checks its container's tasks are Popcorn binaries, and notifies them."""
        frame = pb.Frame(cross_prepare=pb.CrossPrepare(target_isa=target_isa, notify=notify))
        return (await self._request(frame, "source", seconds, "cross_ready")).cross_ready

    async def freeze(self, seconds: float, *, lazy: bool = False, readout: bool = False) -> pb.Frozen:
        """Checkpoint the agent's container; its files follow, read with :meth:`incoming`. `lazy`: the flat
        freeze, whose pages are asked with :meth:`send_pages` and read with :meth:`source_pages`. `readout`: an
        emulated container, read out of its emulator into a restorer's plan."""
        if lazy:
            self._pages_back = asyncio.Queue(REPLIES_LIMIT)
        frame = pb.Frame(freeze=pb.Freeze(lazy=lazy, readout=readout))
        return (await self._request(frame, "freeze", seconds, "frozen")).frozen

    async def send_pages(self, data: bytes) -> None:
        """Page requests (the target's lazy-pages') to the source agent's lazy dump."""
        await self._send(pb.Frame(pages=pb.Pages(data=data)))

    async def source_pages(self) -> AsyncIterator[bytes]:
        """The source agent's page replies as they come; the link's failure is raised. No idle deadline: the
        target asks for pages when it needs them, and the commit's `paging` deadline bounds the whole."""
        queue = self._pages_back
        if queue is None:
            raise TransportError("no flat freeze on this link: the source serves no pages")
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def incoming(self) -> pb.Frame:
        """The next frame of the files the agent sends, failing if none comes for `stream_idle` seconds."""
        idle = self.timeouts.stream_idle
        try:
            async with asyncio.timeout(idle):
                frame = await self._pending.replies.get()
        except TimeoutError as exc:
            raise self._stalled(idle, "the agent sent no data") from exc
        if body(frame) == "error":
            if isinstance(self._failure, TransportError):
                raise self._failure
            raise AgentRefused.from_frame(frame.error)
        return frame

    async def source_end(self, action: int, seconds: float) -> pb.SourceEnded:
        frame = pb.Frame(source_end=pb.SourceEnd(action=action))  # type: ignore[arg-type]
        return (await self._request(frame, "source-end", seconds, "source_ended")).source_ended

    async def query(self, migration_id: str) -> pb.Outcome:
        frame = pb.Frame(query=pb.Query(migration_id=migration_id))
        return (await self._request(frame, "query", self.timeouts.query, "outcome")).outcome


