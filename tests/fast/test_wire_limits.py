"""Frames on the wire: the size limit is enforced before anything is allocated, and every way a channel can
end mid-frame is a WireError, a clean end between frames a ChannelClosed."""

from __future__ import annotations

import asyncio
import struct

import pytest

from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.wire import MAX_FRAME, ChannelClosed, WireError, encode_frame, read_frame


def reader_of(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=2**22)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def test_a_frame_round_trips() -> None:
    frame = pb.Frame(error=pb.Error(message="no space", phase="files", code=pb.ERROR_NO_SPACE))
    back = await read_frame(reader_of(encode_frame(frame)))
    assert (back.error.message, back.error.phase, back.error.code) == ("no space", "files", pb.ERROR_NO_SPACE)


async def test_an_oversized_frame_is_refused_from_its_header_alone() -> None:
    # Only the header is there: the refusal must not wait for (or allocate) the announced body.
    with pytest.raises(WireError, match=f"exceeds the {MAX_FRAME}-byte limit"):
        await asyncio.wait_for(read_frame(reader_of(struct.pack(">I", MAX_FRAME + 1), eof=False)), 5)


async def test_the_largest_allowed_frame_is_read() -> None:
    frame = pb.Frame(file_data=pb.FileData(stream_id=1, data=b"x" * (MAX_FRAME - 64)))
    data = encode_frame(frame)
    assert len(data) - 4 <= MAX_FRAME
    assert (await read_frame(reader_of(data))).file_data.data == frame.file_data.data


@pytest.mark.parametrize(("data", "error", "match"), [
    (b"", ChannelClosed, "closed"),
    (b"\x00\x00", WireError, "middle of a frame header"),
    (struct.pack(">I", 10) + b"abc", WireError, "after 3 of 10"),
    (struct.pack(">I", 3) + b"\xff\xff\xff", WireError, "undecodable"),
    (struct.pack(">I", 0), WireError, "no known body"),
])
async def test_broken_channels(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        await read_frame(reader_of(data))
