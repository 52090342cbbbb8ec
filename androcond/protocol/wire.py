"""Frames on the wire: a big-endian u32 length, then one serialized ``Frame`` (protocol.proto).

Shared by the daemon's transport and the agent. A frame larger than MAX_FRAME is refused before it is read,
so a broken or hostile peer cannot make either side allocate without bound.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Protocol

from google.protobuf.message import DecodeError

from ..errors import AndrocondError
from . import protocol_pb2 as pb

# 2: outcome states and error codes are enums (protocol.proto's OutcomeState, ErrorCode), not strings.
PROTOCOL_VERSION = 2
# File data travels in chunks of at most CHUNK bytes; a frame carries one chunk plus a few bytes of header.
CHUNK = 1024 * 1024
MAX_FRAME = CHUNK + 64 * 1024
_LENGTH = struct.Struct(">I")


class WireError(AndrocondError):
    """The peer sent something that is not a valid frame, or the channel closed mid-frame."""


class ChannelClosed(WireError):
    """The channel ended cleanly between frames."""


class FrameReader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


class FrameWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


async def read_frame(reader: FrameReader) -> pb.Frame:
    try:
        header = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise ChannelClosed("the peer closed the channel") from exc
        raise WireError("the channel closed in the middle of a frame header") from exc
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FRAME:
        raise WireError(f"frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise WireError(f"the channel closed after {len(exc.partial)} of {length} frame bytes") from exc
    frame = pb.Frame()
    try:
        frame.ParseFromString(payload)
    except DecodeError as exc:
        raise WireError(f"undecodable frame of {length} bytes: {exc}") from exc
    if frame.WhichOneof("body") is None:
        raise WireError("frame with no known body (a newer peer?)")
    return frame


def encode_frame(frame: pb.Frame) -> bytes:
    payload = frame.SerializeToString()
    return _LENGTH.pack(len(payload)) + payload


async def write_frame(writer: FrameWriter, frame: pb.Frame) -> None:
    """Write one frame and wait for the channel's buffer to drain below its high-water mark."""
    writer.write(encode_frame(frame))
    await writer.drain()


def body(frame: pb.Frame) -> str:
    kind = frame.WhichOneof("body")
    assert kind is not None
    return str(kind)
