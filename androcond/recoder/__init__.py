"""Image transforms between a CRIU dump and what the target device can restore.

A recode reads a dump directory and writes a new one. It is a list of stages, each a function of the
image set (`Stage`): `Aarch64Recode` / `X86_64Recode` (across ISAs, after the Popcorn notify), `AndroidProfile`
(seccomp, LSM, mountpoints), `CgroupV1Mounts` (a target with cgroup v2), `AbsentMountpoints` (paths the
target lacks), `PagemapCompat` (a target CRIU older than 4.2). With no stage — same ISA, no profile, a
target like this host — it is the identity: every file is copied unchanged in the kernel (copy_file_range).

`prepare()` runs the stages (small images only); the result is written to a directory (`recode()`, pages
copied in the kernel) or streamed in chunks (`Recoded.chunks()`). All of it
is synchronous and bounded in memory: run it in a thread from asyncio (`recode_async()` does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..images.files import StrPath
from ..popcorn.notify import Regset
from .android import DEFAULT_DROPPED_MOUNTS, AbsentMountpoints, AndroidProfile, CgroupV1Mounts
from .arch import Aarch64Recode, AArch64Regs, IsaRecode, VdsoTemplate, X86_64Recode, X86Regs, core_isa
from .elf import ElfInfo, read_elf
from .imageset import ImageSet, OutputFile, RecodeError, WriteStats, write_outputs
from .pagemap_compat import PagemapCompat, reads_only_old_counts
from .preflight import ISAS, Problem, RecodeRefused, check_executable, preflight_processes

Stage = Callable[[ImageSet], None]
PROFILES = ("android",)
STREAM_CHUNK = 1 << 20


@dataclass(frozen=True)
class RecodeOptions:
    target: str  # "x86_64" or "aarch64"
    root: Path = Path("/")  # where the tasks' paths resolve: the container's root filesystem
    profile: str | None = None  # "android" or None
    vdso: VdsoTemplate | None = None  # the target's vdso; needed for a cross-ISA recode
    dropped_mounts: tuple[str, ...] = DEFAULT_DROPPED_MOUNTS
    cgroup_v1_to_v2: bool = False  # the dump's cgroups are v1 and the target's v2: drop the controller mounts
    target_criu: str = ""  # the target's CRIU version ("": the same as the dump's)
    absent_mounts: tuple[str, ...] = ()  # mountpoints the target lacks (its agent says which)
    regsets: tuple[Regset, ...] = ()  # across ISAs: what the notify read of regs_dst/tls_dst, per task


@dataclass(frozen=True)
class RecodeReport:
    source: str
    target: str
    stages: list[str]
    stats: WriteStats
    seconds: float
    warnings: list[str]


@dataclass(frozen=True)
class Recoded:
    """A recode planned and its small images encoded; the bulk (pages) is read only when written or
    streamed. The source directory must stay as it is until then."""

    source: str
    target: str
    stages: list[str]
    files: list[OutputFile]
    warnings: list[str]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def write(self, out: StrPath, progress: Callable[[int], None] | None = None) -> WriteStats:
        return write_outputs(self.files, out, progress=progress)

    def chunks(self, chunk_size: int = STREAM_CHUNK) -> Iterator[tuple[OutputFile, memoryview]]:
        """Every file's bytes in order, as views into one reused buffer: consume each before the next."""
        buffer = bytearray(chunk_size)
        for output in self.files:
            for chunk in output.chunks(buffer):
                yield output, chunk


def plan(images: ImageSet, options: RecodeOptions) -> list[Stage]:
    """The stages that take this dump to `options.target` (empty: identity)."""
    return stages_for(core_isa(images), options)


def stages_for(source: str, options: RecodeOptions) -> list[Stage]:
    """The stages that take a dump of ISA `source` to `options.target` (empty: identity, nothing to recode)."""
    if options.target not in ISAS:
        raise RecodeError(f"unknown target ISA {options.target!r} (one of {', '.join(ISAS)})")
    if options.profile is not None and options.profile not in PROFILES:
        raise RecodeError(f"unknown profile {options.profile!r} (one of {', '.join(PROFILES)})")
    stages: list[Stage] = []
    if source != options.target:
        across = {("x86_64", "aarch64"): Aarch64Recode, ("aarch64", "x86_64"): X86_64Recode}.get(
            (source, options.target))
        if across is None:
            raise RecodeError(f"recode {source} -> {options.target} is not implemented")
        if options.vdso is None:
            raise RecodeError("a cross-ISA recode needs the target's vdso image")
        stages.append(across(options.vdso, options.root, target_criu=options.target_criu,
                             regsets=options.regsets))
    if options.profile == "android":
        stages.append(AndroidProfile(options.dropped_mounts))
    if options.cgroup_v1_to_v2:
        stages.append(CgroupV1Mounts())
    if options.absent_mounts:
        stages.append(AbsentMountpoints(options.absent_mounts))
    if reads_only_old_counts(options.target_criu):
        stages.append(PagemapCompat())
    return stages


def prepare(src: StrPath, options: RecodeOptions) -> Recoded:
    """Run the stages over the dump in `src` (blocking, small reads only). Raises RecodeError or
    ImageFormatError; nothing is written."""
    images = ImageSet(src)
    stages = plan(images, options)
    for stage in stages:
        stage(images)
    return Recoded(core_isa(images), options.target, [type(s).__name__ for s in stages], images.outputs(),
                   images.warnings)


def recode(src: StrPath, out: StrPath, options: RecodeOptions,
           progress: Callable[[int], None] | None = None) -> RecodeReport:
    """Recode the dump in `src` into the new directory `out` (blocking). Raises RecodeError or
    ImageFormatError. `progress` gets the byte count of each file written (from the calling thread)."""
    started = time.monotonic()
    recoded = prepare(src, options)
    stats = recoded.write(out, progress)
    return RecodeReport(recoded.source, recoded.target, recoded.stages, stats, time.monotonic() - started,
                        recoded.warnings)


async def recode_async(src: StrPath, out: StrPath, options: RecodeOptions,
                       progress: Callable[[int], None] | None = None) -> RecodeReport:
    """recode() in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(recode, src, out, options, progress)


__all__ = [
    "DEFAULT_DROPPED_MOUNTS",
    "ISAS",
    "PROFILES",
    "AArch64Regs",
    "Aarch64Recode",
    "AbsentMountpoints",
    "AndroidProfile",
    "CgroupV1Mounts",
    "ElfInfo",
    "ImageSet",
    "IsaRecode",
    "PagemapCompat",
    "Problem",
    "RecodeError",
    "RecodeOptions",
    "RecodeRefused",
    "RecodeReport",
    "Recoded",
    "Stage",
    "VdsoTemplate",
    "X86Regs",
    "X86_64Recode",
    "check_executable",
    "core_isa",
    "plan",
    "preflight_processes",
    "prepare",
    "read_elf",
    "recode",
    "recode_async",
    "stages_for",
]
