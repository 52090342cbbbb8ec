"""Receiving a migration's files: each written straight into place as it arrives (files.py, in worker threads)
or, for the image the device lacks, handed to its engine's load (image_load.py); a compressed chunk
decompressed first (in a worker thread, to exactly its announced size), its SHA-256 checked over the
decompressed bytes as it lands, and the client told how much is stored so that it keeps a bounded amount in
flight.

A part of the agent's session (session.py), kept here: its methods run with the session as `self`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

from ..aio import complete
from ..logging import get_logger
from ..protocol import compression
from ..protocol import protocol_pb2 as pb
from ..protocol.codes import OutcomeState
from . import files, image_load
from .device import DeviceEngine
from .errors import NoSpace, ProtocolViolation
from .files import FREE_SPACE_MARGIN, OpenFile, free_bytes
from .incoming import IncomingMigration

log = get_logger(__name__)
# How often the client hears how much file data is stored: well below its UNSTORED_LIMIT (link/transport.py).
STORED_STEP = 4 * 1024 * 1024


class ReceiverPort(Protocol):
    """What receiving uses of its session."""

    device: DeviceEngine
    migration: IncomingMigration | None
    current: OpenFile | None
    _task: asyncio.Task[Any] | None
    _bytes_stored: int
    _stored_reported: int

    async def send(self, frame: pb.Frame) -> None: ...

    async def _discard(self, migration: IncomingMigration, state: OutcomeState, error: str) -> None: ...

    async def _prepare(self, migration: IncomingMigration) -> None: ...

    def _active(self) -> IncomingMigration: ...

    async def _root_for(self, migration: IncomingMigration, start: pb.FileStart) -> Path: ...

    async def _stored(self, size: int) -> None: ...


class Receiving:
    # Set by the session; declared here, where they are assigned too.
    current: OpenFile | None
    _bytes_stored: int
    _stored_reported: int

    def _active(self: ReceiverPort) -> IncomingMigration:
        if self.migration is None or self.migration.finished:
            raise ProtocolViolation("no migration in progress")
        return self.migration

    async def _root_for(self: ReceiverPort, migration: IncomingMigration, start: pb.FileStart) -> Path:
        if migration.target is None:
            raise ProtocolViolation("files sent before the image (BeginAck asked for it)")
        if start.destination == pb.CHECKPOINT:
            return migration.target.checkpoint_dir
        if start.destination == pb.ROOTFS:
            return migration.target.upper_dir
        if start.destination == pb.VOLUME:
            if start.volume not in migration.volume_dirs:
                migration.volume_dirs[start.volume] = await self.device.take_volume(start.volume)
            return migration.volume_dirs[start.volume]
        raise ProtocolViolation(f"unknown destination {start.destination}")

    async def _file_start(self: ReceiverPort, start: pb.FileStart) -> None:
        migration = self._active()
        if self.current is not None:
            raise ProtocolViolation(f"file {start.stream_id} started while {self.current.start.stream_id} is open")
        current = OpenFile(start)
        data_root = self.device.facts.data_root
        if start.destination == pb.IMAGE_TAR:
            if migration.target is not None:
                raise ProtocolViolation("image sent although the device has it")
            free = await free_bytes(data_root)
            if start.size + FREE_SPACE_MARGIN > free:
                raise NoSpace(f"not enough space on the device for the image ({start.size} bytes, {free} free)")
            assert self._task is not None
            current.image_queue = asyncio.Queue(image_load.QUEUE_CHUNKS)
            current.image_load = asyncio.create_task(
                self.device.load_image(image_load.drain(current.image_queue, self._task)), name="image-load")
            self.current = current
            return
        root = await self._root_for(migration, start)
        # Known before the thread runs: a discard must see (and close, and remove) whatever it makes.
        self.current = current
        await complete(asyncio.to_thread(files.place, root, start, current, migration.written, data_root))

    async def _file_data(self: ReceiverPort, data: pb.FileData) -> None:
        current = self.current
        if current is None or data.stream_id != current.start.stream_id:
            raise ProtocolViolation(f"data for stream {data.stream_id}, which is not open")
        chunk = data.data
        if data.codec:
            try:
                chunk = await asyncio.to_thread(compression.decode, data.codec, chunk, data.raw_size)
            except (compression.CorruptChunk, compression.UnknownCodec) as exc:
                raise ProtocolViolation(f"{current.start.path!r}: the compressed chunk at byte {current.received} "
                                        f"is unreadable: {exc}") from exc
        current.received += len(chunk)
        # An image tar streams from `docker save` with no size known up front (size 0).
        bounded = current.start.destination != pb.IMAGE_TAR or current.start.size > 0
        if current.start.kind != pb.REGULAR or (bounded and current.received > current.start.size):
            raise ProtocolViolation(f"{current.start.path!r}: more data than its announced {current.start.size} bytes")
        if current.image_queue is not None:
            assert current.image_load is not None
            await asyncio.to_thread(current.hasher.update, chunk)  # hashlib releases the GIL
            await image_load.put_unless_failed(current.image_queue, chunk, current.image_load)
        else:
            assert current.fd is not None
            await complete(asyncio.to_thread(files.write_and_hash, current.fd, chunk, current.hasher))
        await self._stored(len(chunk))

    async def _stored(self: ReceiverPort, size: int) -> None:
        """Count stored file data; tell the client every STORED_STEP bytes (it keeps a bounded amount unstored)."""
        self._bytes_stored += size
        if self._bytes_stored - self._stored_reported >= STORED_STEP:
            self._stored_reported = self._bytes_stored
            await self.send(pb.Frame(stored=pb.Stored(bytes=self._bytes_stored)))

    async def _file_end(self: ReceiverPort, end: pb.FileEnd) -> None:
        migration = self._active()
        current = self.current
        if current is None or end.stream_id != current.start.stream_id:
            raise ProtocolViolation(f"end of stream {end.stream_id}, which is not open")
        start = current.start
        error = ""
        if start.kind == pb.REGULAR:
            if current.received != start.size and (start.destination != pb.IMAGE_TAR or start.size):
                error = f"{start.path!r}: received {current.received} of {start.size} bytes"
            elif current.hasher.digest() != end.sha256:
                error = (f"{start.path!r}: SHA-256 mismatch (sent {end.sha256.hex()[:16]}…, "
                         f"received {current.hasher.hexdigest()[:16]}…)")
        if current.image_load is not None and current.image_queue is not None:
            await image_load.put_unless_failed(current.image_queue, None, current.image_load)
            await image_load.finish_load(current.image_load)  # a failed load raises RestoreError, ending the session
            self.current = None
            if not error:
                await self._prepare(migration)
        else:
            # The fd goes to the thread, which closes it whatever happens.
            fd, current.fd = current.fd, None
            self.current = None
            await complete(asyncio.to_thread(files.finish_file, fd, None if error else current.path, start))
        migration.bytes_received += current.received
        if error:
            migration.failed = error
            log.warning("file failed verification", error=error)
        elif start.destination != pb.IMAGE_TAR:  # the image is not one of the migration's announced files
            migration.files_verified += 1
        await self.send(pb.Frame(file_ack=pb.FileAck(stream_id=start.stream_id, ok=not error, error=error)))
        if error:
            await self._discard(migration, OutcomeState.FAILED, error)
