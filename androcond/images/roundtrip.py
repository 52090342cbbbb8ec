"""Decode and re-encode images, reporting the first byte where the output differs from the input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .files import StrPath, image_files
from .framing import ImageReader
from .magic import ImageKind
from .writer import ImageWriter


@dataclass(frozen=True)
class Difference:
    file: str
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: first difference at byte offset {self.offset}: {self.reason}"


class _CompareSink:
    """A write target that compares against the original file instead of storing (bounded memory)."""

    def __init__(self, original: BinaryIO, name: str) -> None:
        self._original = original
        self._name = name
        self.pos = 0
        self.difference: Difference | None = None

    def write(self, data: bytes, /) -> int:
        if self.difference is None:
            expected = self._original.read(len(data))
            if expected != data:
                mismatch = next(
                    (i for i, (a, b) in enumerate(zip(expected, data, strict=False)) if a != b),
                    min(len(expected), len(data)),
                )
                reason = (
                    "output longer than input"
                    if len(expected) < len(data) and mismatch == len(expected)
                    else f"byte 0x{expected[mismatch]:02x} re-encoded as 0x{data[mismatch]:02x}"
                )
                self.difference = Difference(self._name, self.pos + mismatch, reason)
        self.pos += len(data)
        return len(data)

    def finish(self) -> Difference | None:
        if self.difference is None and self._original.read(1):
            self.difference = Difference(self._name, self.pos, "output shorter than input")
        return self.difference


def roundtrip_file(path: StrPath, *, reencode: bool = False) -> Difference | None:
    """Decode every entry of an image and encode it again; None when the bytes come out identical.

    By default untouched entries are written from their original bytes, so this checks framing and that
    every known message decodes. With `reencode`, every decoded message is re-serialized, which shows
    where protobuf's canonical field order differs from CRIU's. Raises ImageFormatError on bad input."""
    p = Path(path)
    with p.open("rb") as src, p.open("rb") as original:
        reader = ImageReader(src, p.name)
        sink = _CompareSink(original, p.name)
        writer = ImageWriter(sink, reader.header)
        if reader.header.kind is ImageKind.RAW:
            for chunk in reader.raw_chunks():
                writer.write_raw(chunk)
        else:
            for entry in reader.entries():
                writer.write_entry(entry, force_encode=reencode)
        return sink.finish()


def roundtrip_dir(directory: StrPath, *, reencode: bool = False) -> dict[str, Difference | None]:
    """roundtrip_file() for every file of a dump directory, keyed by file name."""
    return {path.name: roundtrip_file(path, reencode=reencode) for path in image_files(directory)}
