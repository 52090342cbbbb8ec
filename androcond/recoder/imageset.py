"""The image set a recode works on: a source dump directory plus the edits the stages made to it.

Stages load the small images they edit (core, mm, pagemap, files, mountpoints) into memory; everything else
stays on disk. The result is a list of output files, each a list of segments: ranges of a source file and
new bytes (an edited image, a target vdso). Written to a directory, ranges are copied in the kernel
(copy_file_range); streamed, they are read into one reused buffer. Either way memory stays bounded and
pages are never held in Python.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AndrocondError
from ..images import Image, pb, read_image, write_image_to
from ..images.files import ShortSource, StrPath, copy_range


class RecodeError(AndrocondError):
    """A dump cannot be recoded as asked: names the image or file and the reason."""


@dataclass(frozen=True)
class CopyRange:
    """`length` bytes of the source file from `offset`."""

    offset: int
    length: int


@dataclass(frozen=True)
class NewBytes:
    """Bytes the output has and the source has not (an edited image, a target vdso); small by construction."""

    data: bytes


Segment = CopyRange | NewBytes


@dataclass(frozen=True)
class OutputFile:
    """One file of the recoded set: `segments` of `source` (ranges) and new bytes, in order."""

    name: str
    source: Path
    segments: tuple[Segment, ...]
    mode: int
    rewritten: bool  # False: an unchanged copy of `source`

    @property
    def size(self) -> int:
        return sum(s.length if isinstance(s, CopyRange) else len(s.data) for s in self.segments)

    def write_to(self, directory: Path) -> int:
        """Write into `directory`, copying ranges in the kernel. Returns the bytes written."""
        dst = directory / self.name
        written = write_segments(self.source, dst, self.segments)
        os.chmod(dst, self.mode)
        return written

    def chunks(self, buffer: bytearray) -> Iterator[memoryview]:
        """The file's bytes in pieces of at most len(buffer), as views into `buffer` or into new bytes
        (the buffer is reused: consume each piece before asking for the next)."""
        view = memoryview(buffer)
        with self.source.open("rb", buffering=0) as f:
            fd = f.fileno()
            for seg in self.segments:
                if isinstance(seg, NewBytes):
                    data = memoryview(seg.data)
                    for at in range(0, len(data), len(view)):
                        yield data[at : at + len(view)]
                    continue
                offset, end = seg.offset, seg.offset + seg.length
                while offset < end:
                    got = os.preadv(fd, [view[: min(len(view), end - offset)]], offset)
                    if got == 0:
                        raise RecodeError(f"{self.source}: ends before byte {offset}")
                    yield view[:got]
                    offset += got


@dataclass
class WriteStats:
    files_copied: int = 0
    bytes_written: int = 0
    rewritten: list[str] = field(default_factory=list)  # names of the files that differ from the source


class ImageSet:
    """A dump directory being recoded. Not thread-safe: one recode runs in one thread."""

    def __init__(self, src: StrPath) -> None:
        self.src = Path(src)
        if not (self.src / "inventory.img").is_file():
            raise RecodeError(f"{self.src}: not a CRIU dump directory (no inventory.img)")
        self.names: list[str] = sorted(p.name for p in self.src.iterdir() if p.is_file())
        self._images: dict[str, Image] = {}
        self._edited: set[str] = set()
        self.pages_plans: dict[str, list[Segment]] = {}
        self.warnings: list[str] = []  # what the stages could do but the target may not like

    def path(self, name: str) -> Path:
        return self.src / name

    def glob(self, pattern: str) -> list[str]:
        return sorted(p.name for p in self.src.glob(pattern) if p.is_file())

    def read(self, name: str) -> Image:
        """An image for reading (loaded once). Call edit() instead before changing it."""
        if name not in self._images:
            if name not in self.names:
                raise RecodeError(f"{self.src}: image {name} missing")
            self._images[name] = read_image(self.src / name)
        return self._images[name]

    def edit(self, name: str) -> Image:
        """An image that will be written from memory (re-encoding only the entries that changed)."""
        image = self.read(name)
        self._edited.add(name)
        return image

    def plan_pages(self, name: str, segments: list[Segment]) -> None:
        """Replace pages file `name` by `segments` when written."""
        if name not in self.names:
            raise RecodeError(f"{self.src}: {name} missing")
        self.pages_plans[name] = _coalesce(segments)

    def outputs(self) -> list[OutputFile]:
        """What the recoded set consists of, file by file; only edited images are encoded (in memory)."""
        files = []
        for name in self.names:
            src = self.src / name
            st = src.stat()
            if name in self._edited:
                buf = io.BytesIO()
                write_image_to(buf, self._images[name])
                segments: tuple[Segment, ...] = (NewBytes(buf.getvalue()),)
            elif name in self.pages_plans:
                segments = tuple(self.pages_plans[name])
            else:
                segments = (CopyRange(0, st.st_size),)
            rewritten = name in self._edited or name in self.pages_plans
            files.append(OutputFile(name, src, segments, stat.S_IMODE(st.st_mode), rewritten))
        return files


def write_outputs(files: Iterable[OutputFile], out: StrPath, *,
                  progress: Callable[[int], None] | None = None) -> WriteStats:
    """Write recoded files into directory `out` (created; must be empty if it exists)."""
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise RecodeError(f"{target}: output directory is not empty")
    stats = WriteStats()
    for output in files:
        written = output.write_to(target)
        if output.rewritten:
            stats.rewritten.append(output.name)
        else:
            stats.files_copied += 1
        stats.bytes_written += written
        if progress is not None:
            progress(written)
    return stats


def _coalesce(segments: list[Segment]) -> list[Segment]:
    """Merge adjacent source ranges, so a plan costs one copy per contiguous run of kept pages."""
    merged: list[Segment] = []
    for seg in segments:
        last = merged[-1] if merged else None
        if isinstance(seg, CopyRange) and isinstance(last, CopyRange) and last.offset + last.length == seg.offset:
            merged[-1] = CopyRange(last.offset, last.length + seg.length)
        elif not (isinstance(seg, CopyRange) and seg.length == 0) and seg != NewBytes(b""):
            merged.append(seg)
    return merged


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    try:
        copy_range(src, dst, offset, length)
    except ShortSource as exc:
        raise RecodeError(str(exc)) from exc


def write_segments(src: Path, dst: Path, segments: Iterable[Segment]) -> int:
    """Write `dst` as the concatenation of `segments` taken from `src`. Returns the bytes written."""
    total = 0
    with src.open("rb", buffering=0) as fin, dst.open("wb", buffering=0) as fout:
        size = os.fstat(fin.fileno()).st_size
        for seg in segments:
            if isinstance(seg, NewBytes):
                view = memoryview(seg.data)
                while view:
                    view = view[os.write(fout.fileno(), view):]
                total += len(seg.data)
                continue
            if seg.offset + seg.length > size:
                raise RecodeError(f"{src.name}: range {seg.offset}+{seg.length} lies past its {size} bytes")
            _copy_range(fin.fileno(), fout.fileno(), seg.offset, seg.length)
            total += seg.length
    return total


def iter_tasks(images: ImageSet) -> Iterator[tuple[int, list[int]]]:
    """(pid, thread ids) of every task in pstree.img, in pstree order."""
    for entry in images.read("pstree.img").entries:
        task = entry.get(pb.pstree_entry)
        yield task.pid, list(task.threads) or [task.pid]
