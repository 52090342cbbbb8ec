"""What a migration sends to the device: files (from disk or from a stream) and how far the sending got.

Built by the pipeline and layer.py, consumed by the transport; neither side needs the other to name them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import AndrocondError
from ..protocol import protocol_pb2 as pb
from ..protocol.wire import CHUNK


class SourceChanged(AndrocondError, OSError):
    """A file changed under us while it was being sent (it must not: the container is stopped)."""


@dataclass(frozen=True)
class OutgoingFile:
    destination: int  # pb.Destination
    path: str
    kind: int = pb.REGULAR
    source: Path | None = None
    size: int = 0
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    link_target: str = ""
    volume: str = ""
    opaque: bool = False
    # Content from a stream instead of `source` (e.g. `docker save`); size 0 when not known up front.
    stream: Callable[[], AsyncIterator[bytes]] | None = None
    # The SHA-256 its own source computed, known once `stream` has ended (a relay): sent as the file's digest
    # instead of one computed here, so the target checks the data end to end against its origin.
    vouched: Callable[[], bytes] | None = None


@dataclass
class Progress:
    bytes_sent: int = 0  # file data as read (what the digests are over)
    wire_bytes: int = 0  # the same data as the link carried it: compressed where that paid
    files_sent: int = 0
    files_verified: int = 0
    bytes_expected: int = 0  # preflight's estimate of what the stream will carry (0: not known yet)


ProgressCallback = Callable[[Progress], None]


async def read_file_chunks(spec: OutgoingFile) -> AsyncIterator[bytes]:
    """Read a local file in CHUNK pieces in a worker thread (disk reads never stall the loop)."""
    assert spec.source is not None
    fd = await asyncio.to_thread(os.open, spec.source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        remaining = spec.size
        while remaining > 0:
            chunk = await asyncio.to_thread(os.read, fd, min(CHUNK, remaining))
            if not chunk:
                raise SourceChanged(f"{spec.source} shrank while being sent ({remaining} bytes missing)")
            remaining -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


