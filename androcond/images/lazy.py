"""The device's copy of a dump for post-copy: every image as dumped, except that the pages CRIU may load lazily
are left out.

CRIU flags the pagemap entries of lazy-eligible mappings (anonymous private, not locked, not hugetlb, not
vdso/vvar) `PE_PRESENT|PE_LAZY` in every dump. In the device's copy those entries keep only `PE_LAZY`, and their
bytes are left out of pages-N.img: `criu restore --lazy-pages` then maps them empty and `criu lazy-pages` fetches
them from the source's page server, which serves them from the full dump (verified: docs/post-copy.md). The
other entries (file-backed private pages, the vdso's) keep their bytes and are restored at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import criu_pb2 as pb
from .files import copy_range, read_image, write_image
from .pagemap import PE_LAZY, PE_PRESENT, Pagemap


@dataclass(frozen=True)
class LazySplit:
    directory: Path  # the device's pagemap-*.img and pages-*.img (the other images are sent as dumped)
    eager_bytes: int  # page bytes the device gets before the restore
    lazy_bytes: int  # page bytes left to the page server

    @property
    def names(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir())


def split_lazy(dump: Path, out: Path) -> LazySplit:
    """Write into `out` the device's pagemaps (lazy entries flagged PE_LAZY only) and pages files (only the
    bytes of the other present entries). Blocking: run it in a thread."""
    out.mkdir(parents=True, exist_ok=True)
    eager = lazy = 0
    for path in sorted(dump.glob("pagemap-*.img")):
        image = read_image(path)
        pagemap = Pagemap.from_image(image)
        source = dump / pagemap.pages_name
        target = out / pagemap.pages_name
        with open(source, "rb") if source.exists() else open(os.devnull, "rb") as src, open(target, "wb") as dst:
            for run, entry in zip(pagemap.runs, image.entries[1:], strict=True):
                size = run.nr_pages * pagemap.page_size
                if run.pages_offset is None:
                    continue
                if run.flags & PE_LAZY:
                    msg = entry.get(pb.pagemap_entry)
                    msg.flags = PE_LAZY
                    entry.set_message(msg)
                    lazy += size
                    continue
                copy_range(src.fileno(), dst.fileno(), run.pages_offset, size)
                eager += size
        write_image(out / path.name, image)
    return LazySplit(out, eager, lazy)


__all__ = ["PE_LAZY", "PE_PRESENT", "LazySplit", "split_lazy"]
