"""Whole-file helpers on top of the framing: open, load, write and copy images by path."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .framing import CHUNK_SIZE, Entry, ImageHeader, ImageReader
from .magic import ImageKind
from .writer import ImageWriter

StrPath = str | os.PathLike[str]
COPY_CHUNK = 8 * CHUNK_SIZE  # per copy_file_range call: large enough that syscalls do not dominate


class ShortSource(OSError):
    """The source file ended before the range to copy did."""


def copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Copy `length` bytes at `offset` of fd `src` to the current position of fd `dst`, in the kernel when
    it can (copy_file_range), else through a bounded buffer (a pipe, another file system)."""
    end = offset + length
    while offset < end:
        want = min(COPY_CHUNK, end - offset)
        try:
            done = os.copy_file_range(src, dst, want, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            done = _copy_buffered(src, dst, offset, want)
        if done == 0:
            raise ShortSource(f"the source ends {end - offset} bytes short, before byte {offset}")
        offset += done


def _copy_buffered(src: int, dst: int, offset: int, length: int) -> int:
    data = os.pread(src, min(length, CHUNK_SIZE), offset)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]
    return len(data)


@dataclass
class Image:
    """An image held in memory: for the small images we edit (core, mm, files, pstree, ...).

    Raw images keep their bytes in `raw`; stream large ones (pages-N.img) with open_image() instead."""

    name: str
    header: ImageHeader
    entries: list[Entry] = field(default_factory=list)
    raw: bytes = b""

    @property
    def magic_name(self) -> str:
        return self.header.name


@contextmanager
def open_image(path: StrPath, *, chunk_size: int = CHUNK_SIZE) -> Iterator[ImageReader]:
    """An ImageReader over the file at `path` (header already read)."""
    p = Path(path)
    with p.open("rb") as f:
        yield ImageReader(f, p.name, chunk_size=chunk_size)


def read_image(path: StrPath) -> Image:
    """Load a whole image. Raises ImageFormatError on malformed input."""
    with open_image(path) as reader:
        image = Image(reader.name, reader.header)
        if reader.header.kind is ImageKind.RAW:
            image.raw = b"".join(reader.raw_chunks())
        else:
            image.entries = list(reader.entries())
    return image


def write_image_to(f: BinaryIO, image: Image) -> None:
    writer = ImageWriter(f, image.header)
    if image.header.kind is ImageKind.RAW:
        writer.write_raw(image.raw)
    for entry in image.entries:
        writer.write_entry(entry)


def write_image(path: StrPath, image: Image) -> None:
    """Write an image; untouched entries come out byte-identical to what was read."""
    with Path(path).open("wb") as f:
        write_image_to(f, image)


def copy_image(src: StrPath, dst: StrPath, *, chunk_size: int = CHUNK_SIZE) -> None:
    """Stream an image from `src` to `dst` entry by entry (raw images chunk by chunk), validating it."""
    with open_image(src, chunk_size=chunk_size) as reader, Path(dst).open("wb") as out:
        writer = ImageWriter(out, reader.header)
        if reader.header.kind is ImageKind.RAW:
            for chunk in reader.raw_chunks():
                writer.write_raw(chunk)
        else:
            for entry in reader.entries():
                writer.write_entry(entry)


def image_files(directory: StrPath) -> list[Path]:
    """Regular files of a dump directory, sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if p.is_file())
