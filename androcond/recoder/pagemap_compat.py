"""A dump by CRIU >= 4.2 for a device whose CRIU is older: CRIU 4.2 moved a pagemap entry's page count to a new
64-bit field (5) and writes 0 in the old one (2), which is all CRIU 4.1 reads, so 4.1 would restore no memory at
all. The stage writes the count in both fields: 4.1 reads field 2, 4.2 and later prefer field 5."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..criu.compat import version_tuple
from ..images import pb
from .imageset import ImageSet, RecodeError

FIRST_WITH_NR_PAGES64: Final = (4, 2, 0)
U32_MAX: Final = (1 << 32) - 1


def reads_only_old_counts(criu_version: str) -> bool:
    """Whether a CRIU of this version reads only the old 32-bit page count (unknown versions: assume not)."""
    version = version_tuple(criu_version)
    return version is not None and version < FIRST_WITH_NR_PAGES64


@dataclass(frozen=True)
class PagemapCompat:
    """The stage: every entry that has the 64-bit count gets it in the 32-bit field too."""

    def __call__(self, images: ImageSet) -> None:
        for name in images.glob("pagemap-*.img"):
            entries = images.read(name).entries[1:]  # after the head
            if not any(e.get(pb.pagemap_entry).HasField("nr_pages64") for e in entries):
                continue  # an old dump: copied byte for byte
            for entry in images.edit(name).entries[1:]:
                msg = entry.get(pb.pagemap_entry)
                if msg.HasField("nr_pages64"):
                    if msg.nr_pages64 > U32_MAX:
                        raise RecodeError(f"{name}: an entry of {msg.nr_pages64} pages does not fit the older "
                                          "CRIU's 32-bit count")
                    msg.nr_pages = msg.nr_pages64
