"""pagemap-*.img walk: where each dumped page lives inside pages-<pages_id>.img.

pages-N.img is the concatenation, in pagemap order, of the pages of PE_PRESENT entries only; PARENT
(in a parent dump) and non-present entries occupy no bytes (CRIU-IMAGES.md section 2).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from . import criu_pb2 as pb
from .errors import ImageFormatError
from .files import Image, StrPath, open_image
from .framing import PAGEMAP, Entry, ImageHeader

PE_PARENT: Final = 1
PE_LAZY: Final = 2
PE_PRESENT: Final = 4


def host_page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def entry_nr_pages(entry: pb.pagemap_entry) -> int:
    """Page count: field 5 when present (CRIU >= 4.2 writes 0 in the old u32 field 2), else field 2."""
    return entry.nr_pages64 if entry.HasField("nr_pages64") else entry.nr_pages


def entry_flags(entry: pb.pagemap_entry) -> int:
    """PE_* flags; images older than the flags field only say in_parent or not."""
    if entry.HasField("flags"):
        return entry.flags
    return PE_PARENT if entry.in_parent else PE_PRESENT


@dataclass(frozen=True)
class PageRun:
    """One pagemap entry resolved: `pages_offset` is its byte offset in pages-N.img, None if absent."""

    index: int  # entry number in the pagemap image, the head being 0
    vaddr: int
    nr_pages: int
    flags: int
    pages_offset: int | None
    entry_offset: int  # byte offset of the entry in the pagemap image, for error reports

    @property
    def present(self) -> bool:
        return self.pages_offset is not None


@dataclass
class Pagemap:
    name: str
    pages_id: int
    page_size: int
    runs: list[PageRun]

    @property
    def pages_name(self) -> str:
        return f"pages-{self.pages_id}.img"

    @property
    def present_bytes(self) -> int:
        """Bytes the PRESENT entries occupy in pages-N.img."""
        return sum(run.nr_pages for run in self.runs if run.present) * self.page_size

    @classmethod
    def from_entries(cls, entries: Iterable[Entry], name: str, page_size: int | None = None) -> Pagemap:
        size = page_size or host_page_size()
        iterator = iter(entries)
        head_entry = next(iterator, None)
        if head_entry is None:
            raise ImageFormatError(name, 8, "pagemap without pagemap_head")
        head = head_entry.get(pb.pagemap_head)
        runs: list[PageRun] = []
        offset = 0
        for index, entry in enumerate(iterator, start=1):
            msg = entry.get(pb.pagemap_entry)
            nr_pages, flags = entry_nr_pages(msg), entry_flags(msg)
            present = bool(flags & PE_PRESENT)
            runs.append(PageRun(index, msg.vaddr, nr_pages, flags, offset if present else None, entry.offset))
            if present:
                offset += nr_pages * size
        return cls(name, head.pages_id, size, runs)

    @classmethod
    def load(cls, path: StrPath, page_size: int | None = None) -> Pagemap:
        with open_image(path) as reader:
            _check_pagemap(reader.header, reader.name)
            return cls.from_entries(reader.entries(), reader.name, page_size)

    @classmethod
    def from_image(cls, image: Image, page_size: int | None = None) -> Pagemap:
        """From a pagemap image already in memory (one that is being edited)."""
        _check_pagemap(image.header, image.name)
        return cls.from_entries(image.entries, image.name, page_size)

    def check_pages_size(self, size: int) -> None:
        """Raise unless pages-N.img (of `size` bytes) holds exactly the PRESENT pages."""
        for run in self.runs:
            if run.pages_offset is not None and run.pages_offset + run.nr_pages * self.page_size > size:
                raise ImageFormatError(
                    self.name,
                    run.entry_offset,
                    f"entry {run.index} (vaddr 0x{run.vaddr:x}, {run.nr_pages} pages) lies beyond the "
                    f"{size} bytes of {self.pages_name}",
                )
        if self.present_bytes != size:
            raise ImageFormatError(
                self.pages_name,
                self.present_bytes,
                f"{size - self.present_bytes} bytes not covered by any PRESENT entry of {self.name}",
            )

    def has_pages(self, start: int, end: int) -> bool:
        """Whether any dumped page (PRESENT: bytes in the pages file) lies in [start, end)."""
        return any(r.present and r.vaddr < end and start < r.vaddr + r.nr_pages * self.page_size for r in self.runs)

    def find(self, addr: int) -> PageRun | None:
        """The run covering `addr`, present or not (a scan: pagemaps have at most a few thousand runs)."""
        return next((r for r in self.runs if r.vaddr <= addr < r.vaddr + r.nr_pages * self.page_size), None)

    def file_offset(self, addr: int) -> int | None:
        """Byte offset of `addr` in pages-N.img, None when that page was not dumped here."""
        run = self.find(addr)
        if run is None or run.pages_offset is None:
            return None
        return run.pages_offset + (addr - run.vaddr)

    def read(self, pages: BinaryIO, addr: int, length: int) -> bytes:
        """Read `length` bytes of dumped memory at `addr` from an open pages-N.img.

        Raises ImageFormatError if part of the range is not PRESENT in this pagemap or the file is short."""
        parts: list[bytes] = []
        while length > 0:
            run = self.find(addr)
            if run is not None and run.pages_offset is None and run.flags & PE_LAZY:
                raise ImageFormatError(self.name, 0, f"address 0x{addr:x} is in memory left to post-copy (a lazy "
                                                     "dump's anonymous pages are served later, not written)")
            if run is None or run.pages_offset is None:
                raise ImageFormatError(self.name, 0, f"address 0x{addr:x} has no PRESENT page in this dump")
            run_end = run.vaddr + run.nr_pages * self.page_size
            take = min(length, run_end - addr)
            offset = run.pages_offset + (addr - run.vaddr)
            pages.seek(offset)
            data = pages.read(take)
            if len(data) != take:
                raise ImageFormatError(self.pages_name, offset, f"truncated: {take} bytes needed")
            parts.append(data)
            addr += take
            length -= take
        return b"".join(parts)


def _check_pagemap(header: ImageHeader, name: str) -> None:
    if header.magic != PAGEMAP:
        raise ImageFormatError(name, 4, f"not a pagemap image but {header.name}")


def check_pagemaps(directory: StrPath, page_size: int | None = None) -> dict[str, Pagemap]:
    """Load every pagemap-*.img of a dump and check each against its pages-N.img size."""
    result: dict[str, Pagemap] = {}
    for path in sorted(Path(directory).glob("pagemap-*.img")):
        pagemap = Pagemap.load(path, page_size)
        pages = path.parent / pagemap.pages_name
        if not pages.is_file():
            if pagemap.present_bytes:
                raise ImageFormatError(pagemap.name, 0, f"{pagemap.pages_name} missing")
        else:
            pagemap.check_pages_size(pages.stat().st_size)
        result[path.name] = pagemap
    return result
