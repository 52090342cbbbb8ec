"""The device's files relayed to the target as they come (the way back, when nothing must be recoded): each file
the source agent sends — its checkpoint, writable layer and volumes — goes on to the target's link chunk by chunk,
instead of landing in the daemon's workspace first and being read back from there.

The digest each file goes on with is the source agent's own (OutgoingFile.vouched), so the target checks what
it received against the data's origin, end to end, and nothing hashes it on the way. The relay checks the sizes:
a file longer or shorter than announced fails before its end goes on, so the target never verifies it and the
move rolls back. The source's link is released once the last file has passed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..agent.errors import UnsafePath
from ..agent.paths import check_name
from ..link.payload import OutgoingFile
from ..link.ssh import TransportError
from ..protocol import protocol_pb2 as pb
from ..protocol.wire import body

RELAYED = (pb.CHECKPOINT, pb.ROOTFS, pb.VOLUME)


def check_volume(name: str) -> str:
    """A volume the device names: one plain name, never a path (TransportError otherwise)."""
    try:
        check_name(name)
    except UnsafePath as exc:
        raise TransportError(f"the device sent {exc}") from exc
    if "/" in name:
        raise TransportError(f"the device named a volume {name!r}")
    return name


class FrameSource(Protocol):
    async def incoming(self) -> pb.Frame: ...


@dataclass
class _Passing:
    """A regular file on its way: its data is read off the link as the target's stream asks for it."""

    start: pb.FileStart
    sha256: bytes | None = None  # the source's digest, once its end has come

    def vouched(self) -> bytes:
        if self.sha256 is None:
            raise TransportError(f"{self.start.path!r}: its end had not come from the device")
        return self.sha256


class Relay:
    """`count` files read off `link` (start, data, end), as OutgoingFiles whose data is read off the link when the
    stream sends them. The consumer takes every file's data before asking for the next file (send_files does)."""

    def __init__(self, link: FrameSource, count: int, *, release: Callable[[], Awaitable[None]]) -> None:
        self._link = link
        self._count = count
        self._release = release
        self.bytes_relayed = 0

    async def files(self) -> AsyncIterator[OutgoingFile]:
        for _ in range(self._count):
            start = await self._start()
            if start.kind != pb.REGULAR:
                await self._end(start)
                yield self._outgoing(start)
                continue
            passing = _Passing(start)
            yield self._outgoing(start, passing)
            if passing.sha256 is None:
                raise TransportError(f"{start.path!r} from the device was not relayed whole")
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
        except UnsafePath as exc:
            raise TransportError(f"the device sent {exc}") from exc
        if start.destination == pb.VOLUME:
            check_volume(start.volume)
        return start

    def _outgoing(self, start: pb.FileStart, passing: _Passing | None = None) -> OutgoingFile:
        return OutgoingFile(start.destination, start.path, kind=start.kind, size=start.size, mode=start.mode,
                            uid=start.uid, gid=start.gid, mtime_ns=start.mtime_ns, link_target=start.link_target,
                            volume=start.volume, opaque=start.opaque,
                            stream=(lambda: self._data(passing)) if passing is not None else None,
                            vouched=passing.vouched if passing is not None else None)

    async def _data(self, passing: _Passing) -> AsyncIterator[bytes]:
        start = passing.start
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
            self.bytes_relayed += len(data)
            yield data
        if received != start.size:
            raise TransportError(f"{start.path!r} from the device is short: {received} of {start.size} bytes")
        passing.sha256 = frame.file_end.sha256

    async def _end(self, start: pb.FileStart) -> None:
        frame = await self._link.incoming()
        if body(frame) != "file_end":
            raise TransportError(f"unexpected {body(frame)} from the device within {start.path!r}")
