"""The device's files relayed to the target as they come (the way back, when nothing must be recoded): each file
the source agent sends — its checkpoint, writable layer and volumes — goes on to the target's link chunk by chunk,
instead of landing in the daemon's workspace first and being read back from there.

Each file's data is checked against the source agent's SHA-256 as it passes; a mismatch (or a short file) fails
before the file's end goes on, so the target never verifies it and the move rolls back. The target checks its
own digest of what it received, as for any file. The source's link is released once the last file has passed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from ..agent.errors import UnsafePath
from ..agent.paths import check_name
from ..link.payload import OutgoingFile
from ..link.ssh import TransportError
from ..protocol import protocol_pb2 as pb
from ..protocol.wire import body

RELAYED = (pb.CHECKPOINT, pb.ROOTFS, pb.VOLUME)


class FrameSource(Protocol):
    async def incoming(self) -> pb.Frame: ...


class Relay:
    """`count` files read off `link` (start, data, end), as OutgoingFiles whose data is read off the link when the
    stream sends them. The consumer takes every file's data before asking for the next file (send_files does)."""

    def __init__(self, link: FrameSource, count: int, *, release: Callable[[], Awaitable[None]],
                 emptied: frozenset[str] = frozenset()) -> None:
        self._link = link
        self._count = count
        self._release = release
        # Checkpoint files announced empty and sent without their data (an injected fault: the target's CRIU
        # refuses an empty inventory); their data is still read and checked.
        self._emptied = emptied
        self._open: pb.FileStart | None = None  # the regular file whose data the consumer is reading
        self.bytes_relayed = 0

    async def files(self) -> AsyncIterator[OutgoingFile]:
        for _ in range(self._count):
            start = await self._start()
            if start.kind == pb.REGULAR:
                self._open = start
                yield self._outgoing(start)
                if self._open is not None:
                    raise TransportError(f"{start.path!r} from the device was not relayed whole")
            else:
                await self._end(start, hashlib.sha256(), 0)
                yield self._outgoing(start)
        await self._release()

    async def _start(self) -> pb.FileStart:
        frame = await self._link.incoming()
        if body(frame) != "file_start":
            raise TransportError(f"expected file_start from the device, got {body(frame)}")
        start = frame.file_start
        if start.destination not in RELAYED:
            raise TransportError(f"the device sent a file for destination {start.destination}")
        try:
            check_name(start.path)
            if start.destination == pb.VOLUME:
                check_name(start.volume)
                if "/" in start.volume:
                    raise UnsafePath(f"refused volume {start.volume!r}")
        except UnsafePath as exc:
            raise TransportError(f"the device sent {exc}") from exc
        return start

    def _outgoing(self, start: pb.FileStart) -> OutgoingFile:
        empty = start.destination == pb.CHECKPOINT and start.path in self._emptied
        return OutgoingFile(start.destination, start.path, kind=start.kind, size=0 if empty else start.size,
                            mode=start.mode, uid=start.uid, gid=start.gid, mtime_ns=start.mtime_ns,
                            link_target=start.link_target, volume=start.volume, opaque=start.opaque,
                            stream=(lambda: self._data(start, empty)) if start.kind == pb.REGULAR else None)

    async def _data(self, start: pb.FileStart, empty: bool) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        received = 0
        while True:
            frame = await self._link.incoming()
            kind = body(frame)
            if kind == "file_end":
                break
            if kind != "file_data":
                raise TransportError(f"unexpected {kind} from the device within {start.path!r}")
            if frame.file_data.codec:
                raise TransportError(f"the device sent {start.path!r} compressed, which it was not asked to")
            data = frame.file_data.data
            received += len(data)
            if received > start.size:
                raise TransportError(f"{start.path!r} from the device is longer than its {start.size} bytes")
            await asyncio.to_thread(digest.update, data)  # hashlib releases the GIL
            self.bytes_relayed += len(data)
            if not empty:
                yield data
        self._check(start, frame.file_end, digest, received)
        self._open = None

    async def _end(self, start: pb.FileStart, digest: hashlib._Hash, received: int) -> None:
        frame = await self._link.incoming()
        if body(frame) != "file_end":
            raise TransportError(f"unexpected {body(frame)} from the device within {start.path!r}")
        self._check(start, frame.file_end, digest, received)

    @staticmethod
    def _check(start: pb.FileStart, end: pb.FileEnd, digest: hashlib._Hash, received: int) -> None:
        if start.kind == pb.REGULAR and (received != start.size or end.sha256 != digest.digest()):
            raise TransportError(f"{start.path!r} from the device does not match its digest "
                                 f"({received} of {start.size} bytes)")
