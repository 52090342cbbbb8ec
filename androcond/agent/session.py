"""One client connection to the agent: hello, then at most one migration (begin, files, commit) and any
number of queries.

Every file is written straight into place as it arrives and its SHA-256 is checked as it lands. Until a
commit succeeds, everything written and the prepared container are recorded so that a broken stream, a bad
digest or an abort removes them: a set that did not verify is never restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AndrocondError
from ..logging import get_logger, log_context
from ..protocol import protocol_pb2 as pb
from ..protocol.wire import (
    PROTOCOL_VERSION,
    ChannelClosed,
    FrameReader,
    FrameWriter,
    WireError,
    body,
    read_frame,
    write_frame,
)
from .device import DeviceEngine, RestoreError, TargetContainer, parse_create_config
from .outcomes import OutcomeRecord, OutcomeStore, check_id
from .paths import UnsafePath, open_new_file, place_beneath

log = get_logger(__name__)

HELLO_TIMEOUT_S = 30.0
# A client that goes silent mid-migration for this long is treated as gone.
IDLE_TIMEOUT_S = 300.0
# Space kept free on the device beyond what a migration announces.
FREE_SPACE_MARGIN = 64 * 1024 * 1024
IMAGE_QUEUE_CHUNKS = 16


class ProtocolViolation(AndrocondError):
    pass


@dataclass
class _OpenFile:
    start: pb.FileStart
    path: Path | None = None
    fd: int | None = None
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    received: int = 0
    image_queue: asyncio.Queue[bytes | None] | None = None
    image_load: asyncio.Task[None] | None = None


@dataclass
class _Migration:
    begin: pb.Begin
    target: TargetContainer | None = None
    written: list[Path] = field(default_factory=list)
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    bytes_received: int = 0
    files_verified: int = 0
    failed: str = ""
    finished: bool = False


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class AgentSession:
    def __init__(self, device: DeviceEngine, outcomes: OutcomeStore, reader: FrameReader,
                 writer: FrameWriter) -> None:
        self.device = device
        self.outcomes = outcomes
        self.reader = reader
        self.writer = writer
        self.migration: _Migration | None = None
        self.current: _OpenFile | None = None

    async def send(self, frame: pb.Frame) -> None:
        await write_frame(self.writer, frame)

    async def send_error(self, message: str) -> None:
        # The peer may be gone already; the error is logged by the caller either way.
        with contextlib.suppress(OSError, ConnectionError, WireError):
            await self.send(pb.Frame(error=pb.Error(message=message)))

    async def run(self) -> None:
        try:
            await self._hello()
            while True:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    frame = await read_frame(self.reader)
                await self._dispatch(frame)
        except ChannelClosed:
            log.info("client closed the connection")
        except TimeoutError:
            log.warning("client went silent; closing", idle_timeout_s=IDLE_TIMEOUT_S)
            await self.send_error("agent: idle timeout")
        except (WireError, ProtocolViolation, UnsafePath, RestoreError) as exc:
            log.warning("session failed", error=str(exc))
            await self.send_error(str(exc))
        except (OSError, ConnectionError) as exc:
            log.warning("connection lost", error=str(exc))
        finally:
            if self.migration is not None and not self.migration.finished:
                await asyncio.shield(self._discard(self.migration, "aborted", "connection ended before commit"))

    async def _hello(self) -> None:
        async with asyncio.timeout(HELLO_TIMEOUT_S):
            frame = await read_frame(self.reader)
        if body(frame) != "client_hello":
            raise ProtocolViolation(f"expected client_hello, got {body(frame)}")
        if frame.client_hello.protocol_version != PROTOCOL_VERSION:
            raise ProtocolViolation(f"protocol version {frame.client_hello.protocol_version} is not supported "
                                    f"(agent speaks {PROTOCOL_VERSION})")
        facts = self.device.facts
        await self.send(pb.Frame(agent_hello=pb.AgentHello(
            protocol_version=PROTOCOL_VERSION, agent_version=facts.agent_version, isa=facts.isa,
            page_size=facts.page_size, criu_version=facts.criu_version, engine_version=facts.engine_version,
            free_bytes=_free_bytes(facts.data_root), vdso=facts.vdso, vvar_size=facts.vvar_size)))

    async def _dispatch(self, frame: pb.Frame) -> None:
        kind = body(frame)
        if kind == "file_data":
            await self._file_data(frame.file_data)
        elif kind == "file_start":
            await self._file_start(frame.file_start)
        elif kind == "file_end":
            await self._file_end(frame.file_end)
        elif kind == "begin":
            await self._begin(frame.begin)
        elif kind == "commit":
            await self._commit(frame.commit.file_count)
        elif kind == "query":
            await self._query(frame.query.migration_id)
        elif kind == "abort":
            await self._abort(frame.abort.reason)
        else:
            raise ProtocolViolation(f"unexpected {kind} frame")

    # --- begin ----------------------------------------------------------------------------------------
    async def _begin(self, begin: pb.Begin) -> None:
        if self.migration is not None:
            raise ProtocolViolation("one migration per connection")
        check_id(begin.migration_id)
        previous = self.outcomes.get(begin.migration_id)
        if previous is not None and previous.state in ("running", "restoring"):
            raise ProtocolViolation(f"migration {begin.migration_id} is already {previous.state} here")
        free = _free_bytes(self.device.facts.data_root)
        if begin.total_bytes + FREE_SPACE_MARGIN > free:
            raise ProtocolViolation(f"not enough space on the device: {begin.total_bytes} bytes announced, "
                                    f"{free} free (keeping {FREE_SPACE_MARGIN} spare)")
        parse_create_config(begin.create_config_json)
        self.migration = _Migration(begin)
        self.outcomes.put(OutcomeRecord(begin.migration_id, "receiving"))
        with log_context(migration_id=begin.migration_id):
            log.info("migration begins", container=begin.container_name, image=begin.image,
                     total_bytes=begin.total_bytes, files=begin.file_count)
        if await self.device.has_image(begin.image):
            await self._prepare(self.migration)
            assert self.migration.target is not None
            await self.send(pb.Frame(begin_ack=pb.BeginAck(container_id=self.migration.target.container_id)))
        else:
            await self.send(pb.Frame(begin_ack=pb.BeginAck(need_image=True)))

    async def _prepare(self, migration: _Migration) -> None:
        begin = migration.begin
        migration.target = await self.device.create(begin.container_name,
                                                    parse_create_config(begin.create_config_json),
                                                    begin.checkpoint_name)

    # --- files ----------------------------------------------------------------------------------------
    def _active(self) -> _Migration:
        if self.migration is None or self.migration.finished:
            raise ProtocolViolation("no migration in progress")
        return self.migration

    async def _root_for(self, migration: _Migration, start: pb.FileStart) -> Path:
        if migration.target is None:
            raise ProtocolViolation("files sent before the image (BeginAck asked for it)")
        if start.destination == pb.CHECKPOINT:
            return migration.target.checkpoint_dir
        if start.destination == pb.ROOTFS:
            return migration.target.upper_dir
        if start.destination == pb.VOLUME:
            if start.volume not in migration.volume_dirs:
                migration.volume_dirs[start.volume] = await self.device.volume_dir(start.volume)
            return migration.volume_dirs[start.volume]
        raise ProtocolViolation(f"unknown destination {start.destination}")

    async def _file_start(self, start: pb.FileStart) -> None:
        migration = self._active()
        if self.current is not None:
            raise ProtocolViolation(f"file {start.stream_id} started while {self.current.start.stream_id} is open")
        if start.kind == pb.REGULAR and start.size + FREE_SPACE_MARGIN > _free_bytes(self.device.facts.data_root):
            raise ProtocolViolation(f"not enough space on the device for {start.path!r} ({start.size} bytes)")
        current = _OpenFile(start)
        if start.destination == pb.IMAGE_TAR:
            if migration.target is not None:
                raise ProtocolViolation("image sent although the device has it")
            current.image_queue = asyncio.Queue(IMAGE_QUEUE_CHUNKS)
            current.image_load = asyncio.create_task(self.device.load_image(_drain(current.image_queue)))
            self.current = current
            return
        root = await self._root_for(migration, start)
        path = place_beneath(root, start.path)
        current.path = path
        if start.kind == pb.REGULAR:
            current.fd = open_new_file(path, start.mode)
            migration.written.append(path)
        elif start.kind == pb.DIRECTORY:
            path.mkdir(mode=start.mode & 0o7777 or 0o755, exist_ok=True)
            if start.opaque:
                os.setxattr(path, "trusted.overlay.opaque", b"y")
        elif start.kind == pb.SYMLINK:
            if start.destination == pb.CHECKPOINT:
                raise UnsafePath(f"refused symbolic link {start.path!r} in a checkpoint")
            path.unlink(missing_ok=True)
            os.symlink(start.link_target, path)
            migration.written.append(path)
        elif start.kind == pb.WHITEOUT:
            if start.destination != pb.ROOTFS:
                raise UnsafePath(f"refused whiteout {start.path!r} outside the writable layer")
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            migration.written.append(path)
        self.current = current

    async def _file_data(self, data: pb.FileData) -> None:
        current = self.current
        if current is None or data.stream_id != current.start.stream_id:
            raise ProtocolViolation(f"data for stream {data.stream_id}, which is not open")
        chunk = data.data
        current.received += len(chunk)
        # An image tar streams from `docker save` with no size known up front (size 0).
        bounded = current.start.destination != pb.IMAGE_TAR or current.start.size > 0
        if current.start.kind != pb.REGULAR or (bounded and current.received > current.start.size):
            raise ProtocolViolation(f"{current.start.path!r}: more data than its announced {current.start.size} bytes")
        if current.image_queue is not None:
            current.hasher.update(chunk)
            await current.image_queue.put(chunk)
            return
        assert current.fd is not None
        # Disk writes and hashing in a worker thread: the event loop keeps serving the channel.
        await asyncio.to_thread(_write_and_hash, current.fd, chunk, current.hasher)

    async def _file_end(self, end: pb.FileEnd) -> None:
        migration = self._active()
        current = self.current
        if current is None or end.stream_id != current.start.stream_id:
            raise ProtocolViolation(f"end of stream {end.stream_id}, which is not open")
        self.current = None
        start = current.start
        error = ""
        if current.fd is not None:
            os.close(current.fd)
            current.fd = None
        if start.kind == pb.REGULAR:
            if current.received != start.size and (start.destination != pb.IMAGE_TAR or start.size):
                error = f"{start.path!r}: received {current.received} of {start.size} bytes"
            elif current.hasher.digest() != end.sha256:
                error = (f"{start.path!r}: SHA-256 mismatch (sent {end.sha256.hex()[:16]}…, "
                         f"received {current.hasher.hexdigest()[:16]}…)")
        if current.image_load is not None and current.image_queue is not None:
            await current.image_queue.put(None)
            await current.image_load  # a failed load raises RestoreError, ending the session
            if not error:
                await self._prepare(migration)
        if current.path is not None and not error:
            _apply_metadata(current.path, start)
        migration.bytes_received += current.received
        if error:
            migration.failed = error
            log.warning("file failed verification", error=error)
        elif start.destination != pb.IMAGE_TAR:  # the image is not one of the migration's announced files
            migration.files_verified += 1
        await self.send(pb.Frame(file_ack=pb.FileAck(stream_id=start.stream_id, ok=not error, error=error)))
        if error:
            await self._discard(migration, "failed", error)

    # --- commit, query, abort --------------------------------------------------------------------------
    async def _commit(self, file_count: int = 0) -> None:
        migration = self._active()
        begin = migration.begin
        if self.current is not None:
            raise ProtocolViolation("commit while a file is still open")
        if migration.failed or migration.target is None:
            raise ProtocolViolation(f"nothing to restore: {migration.failed or 'no container was prepared'}")
        expected = file_count or begin.file_count
        if expected and migration.files_verified != expected:
            raise ProtocolViolation(f"commit after {migration.files_verified} of {expected} files")
        record = OutcomeRecord(begin.migration_id, "restoring", migration.target.container_id,
                               bytes_received=migration.bytes_received)
        self.outcomes.put(record)
        started = time.monotonic()
        try:
            await self.device.restore(migration.target, begin.checkpoint_name)
        except RestoreError as exc:
            await self._discard(migration, "failed", str(exc))
        else:
            migration.finished = True
            record.state = "running"
            record.restore_seconds = time.monotonic() - started
            self.outcomes.put(record)
            log.info("restored", migration_id=begin.migration_id, container_id=record.container_id,
                     restore_s=round(record.restore_seconds, 3))
        await self._query(begin.migration_id)

    async def _query(self, migration_id: str) -> None:
        record = self.outcomes.get(migration_id)
        if record is None:
            record = OutcomeRecord(migration_id, "unknown")
        await self.send(pb.Frame(outcome=pb.Outcome(
            migration_id=record.migration_id, state=record.state, container_id=record.container_id,
            error=record.error, restore_seconds=record.restore_seconds, bytes_received=record.bytes_received)))

    async def _abort(self, reason: str) -> None:
        migration = self._active()
        await self._discard(migration, "aborted", reason or "aborted by the client")
        await self._query(migration.begin.migration_id)

    async def _discard(self, migration: _Migration, state: str, error: str) -> None:
        """Remove every file written and the prepared container; record why."""
        migration.finished = True
        current, self.current = self.current, None
        if current is not None:
            if current.fd is not None:
                os.close(current.fd)
            if current.image_load is not None:
                current.image_load.cancel()
                await asyncio.gather(current.image_load, return_exceptions=True)
        for path in reversed(migration.written):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if migration.target is not None:
            try:
                await self.device.discard(migration.target.container_id)
            except AndrocondError as exc:
                log.error("could not remove the prepared container", error=str(exc),
                          container_id=migration.target.container_id)
        self.outcomes.put(OutcomeRecord(migration.begin.migration_id, state,
                                        error=error, bytes_received=migration.bytes_received))
        log.warning("migration discarded", migration_id=migration.begin.migration_id, state=state, error=error)


async def _drain(queue: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
    while (chunk := await queue.get()) is not None:
        yield chunk


def _write_and_hash(fd: int, chunk: bytes, hasher: hashlib._Hash) -> None:
    view = memoryview(chunk)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    hasher.update(chunk)


def _apply_metadata(path: Path, start: pb.FileStart) -> None:
    os.chown(path, start.uid, start.gid, follow_symlinks=False)
    if start.kind != pb.SYMLINK:
        os.chmod(path, start.mode & 0o7777 or (0o755 if start.kind == pb.DIRECTORY else 0o644))
    if start.mtime_ns:
        os.utime(path, ns=(start.mtime_ns, start.mtime_ns), follow_symlinks=False)
