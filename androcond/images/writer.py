"""Writing a CRIU image: its header, then entries (each its u32 size, its message, its payload) or raw data, as
framing.py reads them."""

from __future__ import annotations

from typing import Protocol

from google.protobuf.message import Message

from .framing import _MAX_U32, _U32, Entry, ImageHeader, fixed_extra_length
from .magic import ImageKind


class BinarySink(Protocol):
    """Anything with a binary write(): a file, a BytesIO, a comparing sink."""

    def write(self, data: bytes, /) -> object: ...


class ImageWriter:
    """Writes one image: the header on construction, then entries (or raw chunks)."""

    def __init__(self, f: BinarySink, header: ImageHeader) -> None:
        self._f = f
        self.header = header
        self.pos = 0
        self._index = 0
        self._write(header.encode())

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self.pos += len(data)

    def write_entry(self, entry: Entry, *, force_encode: bool = False, check: bool = True) -> None:
        """Write an entry: its original bytes unless changed, then its payload.

        With `check`, a payload whose length disagrees with the (possibly edited) message is refused,
        since CRIU would misread every entry after it."""
        if self.header.kind is ImageKind.RAW:
            raise ValueError("raw images have no entries: use write_raw()")
        data = entry.encode(force=force_encode)
        if len(data) > _MAX_U32:
            raise ValueError(f"entry of {len(data)} bytes does not fit a u32 size")
        message = entry.message
        if check and message is not None:
            want = fixed_extra_length(self.header.magic, message)
            if want is not None and want != len(entry.extra):
                raise ValueError(
                    f"{type(message).__name__} announces {want} payload bytes, entry carries {len(entry.extra)}"
                )
        self._write(_U32.pack(len(data)) + data)
        if entry.extra:
            self._write(entry.extra)
        self._index += 1

    def write_message(self, message: Message, extra: bytes = b"") -> None:
        self.write_entry(Entry.from_message(message, extra))

    def write_raw(self, data: bytes) -> None:
        self._write(data)
