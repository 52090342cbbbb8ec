"""Recode across ISAs of a dump taken after the Popcorn notify (CRIU-IMAGES.md section 7): x86_64 → aarch64
(the way out) and aarch64 → x86_64 (the way back).

Per task: the target's registers and TLS the Popcorn runtime left in `regs_dst` / `tls_dst` are read from the
dumped memory (located through the executable's symbols and the pagemap, PRESENT pages only, magic checked), or,
where the dump left them to post-copy (a lazy dump does not write .bss), from the copy the notify read at the
migration point (`popcorn.notify.Regset`); every core is rewritten for the target; the source's vdso, vvar and
vsyscall areas are replaced by the target's vdso and vvar; the executable's files.img entries take the target
variant's (`<bin>_aarch64`, `<bin>_x86-64`) size and build id, and the dumped pages of its executable mappings are
dropped: CRIU's parasite made them copy-on-write (the first one is where it was injected), so they hold the source
ISA's code, and the target must map its own variant's text there. Every other image and page is copied unchanged.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from ..criu.compat import version_tuple
from ..images import Entry, Image, ImageFormatError, Pagemap, pb
from ..images.pagemap import PE_PRESENT
from ..popcorn.notify import REGS_DST, TLS_DST, Regset
from .android import clear_seccomp
from .elf import ElfInfo, build_id_words, popcorn_problems, read_elf
from .imageset import CopyRange, ImageSet, NewBytes, RecodeError, Segment, iter_tasks

MTYPE_X86_64: Final = 1
MTYPE_AARCH64: Final = 3
MTYPE_NAMES: Final = {MTYPE_X86_64: "x86_64", MTYPE_AARCH64: "aarch64"}

# VMA status bits and flags (CRIU-IMAGES.md section 4).
VMA_AREA_REGULAR: Final = 1 << 0
VMA_AREA_VSYSCALL: Final = 1 << 2
VMA_AREA_VDSO: Final = 1 << 3
VMA_FILE_PRIVATE: Final = 1 << 6
VMA_ANON_PRIVATE: Final = 1 << 9
VMA_AREA_VVAR: Final = 1 << 12
SPECIAL_AREAS: Final = VMA_AREA_VSYSCALL | VMA_AREA_VDSO | VMA_AREA_VVAR
PROT_READ, PROT_EXEC = 1, 4
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20
AT_SYSINFO_EHDR: Final = 33

# How many auxv words the target's CRIU takes (its AT_VECTOR_SIZE; a longer vector is "Image corrupted"). aarch64's
# grew from 40 to 50 in CRIU 4.1, when it counted the kernel's rseq entries (Linux 6.3). A kernel's vector can be
# longer than the other ISA's CRIU takes: 22 entries fill x86_64's.
AUXV_WORDS: Final = {"x86_64": 44, "aarch64": 50}
AUXV_WORDS_AARCH64_BEFORE_4_1: Final = 40
AARCH64_AUXV_GREW: Final = (4, 1, 0)
# Dropped, in this order, when the vector does not fit: first what describes the source's CPU and means nothing on
# the target (AT_HWCAP4, AT_HWCAP3, the cache geometry entries, AT_BASE_PLATFORM, AT_MINSIGSTKSZ, AT_HWCAP2,
# AT_PLATFORM, AT_HWCAP), then the rseq entries. Only /proc/PID/auxv shows the kernel's copy; the program's own
# (on its stack, which getauxval reads) is unchanged.
AUXV_EXPENDABLE: Final = (30, 29, 40, 41, 42, 43, 44, 45, 46, 47, 24, 51, 26, 15, 16, 28, 27)

# The Popcorn runtime's aarch64 register set: magic@0, sp@8, pc@16, x0..x30@24, v0..v31 (16 bytes each)@272.
AARCH64_REGSET_MAGIC: Final = 0xAABCBDEADBEAF
X86_64_REGSET_MAGIC: Final = 0xA8664DEADBEAF
AARCH64_REGSET: Final = struct.Struct("<3Q31Q512s")
AARCH64_REGSET_SIZE: Final = 784
assert AARCH64_REGSET.size == AARCH64_REGSET_SIZE
# What the kernel shows in PSTATE for EL0 user code after a syscall (N and Z set, as criu-het writes).
AARCH64_PSTATE: Final = 0x60000000

# The Popcorn runtime's x86_64 register set: magic@0, rip@8, rax rdx rcx rbx rsi rdi rbp rsp r8..r15@16,
# mmx[8]@144, xmm[16]@208, st[8] (16 bytes each)@464, u32 cs ss ds es fs gs@592, rflags@616.
X86_64_REGSET: Final = struct.Struct("<2Q16Q64s256s128s6IQ")
X86_64_REGSET_SIZE: Final = 624
assert X86_64_REGSET.size == X86_64_REGSET_SIZE
X86_64_GPREGS: Final = ("ax", "dx", "cx", "bx", "si", "di", "bp", "sp", *(f"r{i}" for i in range(8, 16)))
# What a 64-bit task's segments and flags are on Linux: __USER_CS, __USER_DS, IF and the always-one bit.
X86_64_USER_CS, X86_64_USER_SS, X86_64_FLAGS_BASE = 0x33, 0x2B, 0x202
# The FPU as a fresh task has it (FNINIT's control word, SSE exceptions masked): the register set carries only
# the x87 and SSE registers.
X86_64_FPU_CWD, X86_64_MXCSR, X86_64_MXCSR_MASK = 0x37F, 0x1F80, 0xFFFF
# CRIU's user_x86_regs_mode: NATIVE (not a 32-bit compat task).
X86_64_REGS_NATIVE: Final = 1
# The three GDT TLS slots of a 64-bit task that never used them, as CRIU dumps them.
X86_64_TLS_SLOTS: Final = (12, 13, 14)
NO_SYSCALL: Final = (1 << 64) - 1  # orig_ax -1: the task was not inside a system call to restart

# open(2) flags whose bits differ between the ISAs (aarch64 has its own fcntl.h); every other bit is shared.
# A file's flags as dumped on one ISA mean something else on the other: the kernel forces O_LARGEFILE on every
# open of a 64-bit process, which on x86_64 reads back as O_NOFOLLOW, so a pipe CRIU reopens fails with ELOOP.
OPEN_FLAG_BITS: Final = {
    "x86_64": {"O_DIRECT": 0o40000, "O_LARGEFILE": 0o100000, "O_DIRECTORY": 0o200000, "O_NOFOLLOW": 0o400000},
    "aarch64": {"O_DIRECTORY": 0o40000, "O_NOFOLLOW": 0o100000, "O_DIRECT": 0o200000, "O_LARGEFILE": 0o400000},
}

X86_64_PAGE_SIZE: Final = 4096
VARIANT_SUFFIX: Final = {"x86_64": "_x86-64", "aarch64": "_aarch64"}


@dataclass(frozen=True)
class AArch64Regs:
    sp: int
    pc: int
    x: tuple[int, ...]  # x0..x30
    v: tuple[bytes, ...]  # v0..v31, 16 bytes each
    tls: int

    @classmethod
    def unpack(cls, regset: bytes, tls: bytes, where: str) -> AArch64Regs:
        if len(regset) != AARCH64_REGSET_SIZE or len(tls) != 8:
            raise RecodeError(f"{where}: short register set")
        fields = AARCH64_REGSET.unpack(regset)
        magic, sp, pc = fields[0], fields[1], fields[2]
        if magic != AARCH64_REGSET_MAGIC:
            hint = " (an x86_64 register set: notified for the wrong target?)" if magic == X86_64_REGSET_MAGIC else ""
            raise RecodeError(
                f"{where}: regs_dst magic is 0x{magic:x}, not the aarch64 0x{AARCH64_REGSET_MAGIC:x}{hint}; "
                "was the task notified (Popcorn) before the dump?"
            )
        vbytes: bytes = fields[34]
        return cls(
            sp=sp,
            pc=pc,
            x=tuple(fields[3:34]),
            v=tuple(vbytes[i * 16 : (i + 1) * 16] for i in range(32)),
            tls=int.from_bytes(tls, "little"),
        )

    def vregs(self) -> list[int]:
        """fpsimd.vregs as CRIU stores them: [2i] the low, [2i+1] the high 64 bits of Vi."""
        out: list[int] = []
        for reg in self.v:
            out += [int.from_bytes(reg[:8], "little"), int.from_bytes(reg[8:], "little")]
        return out


@dataclass(frozen=True)
class X86Regs:
    rip: int
    gp: dict[str, int]  # by CRIU's user_x86_regs_entry names (ax, dx, …, r15)
    xmm: bytes  # xmm0..xmm15, 16 bytes each
    st: bytes  # st0..st7 in 16-byte slots, as FXSAVE lays them out
    segments: tuple[int, ...]  # cs, ss, ds, es, fs, gs
    rflags: int
    tls: int

    @classmethod
    def unpack(cls, regset: bytes, tls: bytes, where: str) -> X86Regs:
        if len(regset) < X86_64_REGSET_SIZE or len(tls) != 8:
            raise RecodeError(f"{where}: short register set")
        fields = X86_64_REGSET.unpack(regset[:X86_64_REGSET_SIZE])
        magic, rip = fields[0], fields[1]
        if magic != X86_64_REGSET_MAGIC:
            hint = " (an aarch64 register set: notified for the wrong target?)" if magic == AARCH64_REGSET_MAGIC \
                else ""
            raise RecodeError(
                f"{where}: regs_dst magic is 0x{magic:x}, not the x86_64 0x{X86_64_REGSET_MAGIC:x}{hint}; "
                "was the task notified (Popcorn) before the dump?"
            )
        return cls(rip=rip, gp=dict(zip(X86_64_GPREGS, fields[2:18], strict=True)), xmm=fields[19], st=fields[20],
                   segments=tuple(fields[21:27]), rflags=fields[27], tls=int.from_bytes(tls, "little"))


def open_flags_for(flags: int, source: str, target: str) -> int:
    """`flags` as dumped on `source`, with the bits that differ between the ISAs moved to `target`'s values."""
    mine, theirs = OPEN_FLAG_BITS[source], OPEN_FLAG_BITS[target]
    moved = sum(mine.values())
    out = flags & ~moved
    for name, bit in mine.items():
        if flags & bit:
            out |= theirs[name]
    return out


def _words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


@dataclass(frozen=True)
class VdsoTemplate:
    """The target's vdso and vvar: the vdso image (an ELF of the target ISA, a whole number of pages) and the
    vvar size. Best taken from the device itself (the agent's hello); tests use a stand-in ELF."""

    image: bytes
    vvar_size: int
    page_size: int

    def __post_init__(self) -> None:
        if not self.image.startswith(b"\x7fELF"):
            raise RecodeError("target vdso image is not an ELF file")
        if self.page_size <= 0 or self.page_size & (self.page_size - 1):
            raise RecodeError(f"target page size {self.page_size} is not a power of two")
        if self.vvar_size % self.page_size:
            raise RecodeError(f"target vvar size {self.vvar_size} is not a multiple of the page size")

    @property
    def vdso_pages(self) -> bytes:
        """The vdso padded with zeros to whole pages."""
        return self.image + b"\0" * (-len(self.image) % self.page_size)

    @classmethod
    def load(cls, path: str | Path, *, vvar_pages: int, page_size: int) -> VdsoTemplate:
        try:
            image = Path(path).read_bytes()
        except OSError as exc:
            raise RecodeError(f"{path}: cannot read the target vdso: {exc.strerror or exc}") from exc
        return cls(image, vvar_pages * page_size, page_size)


def core_isa(images: ImageSet) -> str:
    """The ISA of a dump, from its first task's core mtype."""
    pid, _ = next(iter_tasks(images))
    core = images.read(f"core-{pid}.img").entries[0].get(pb.core_entry)
    return MTYPE_NAMES.get(core.mtype, f"mtype {core.mtype}")


def exe_path(root: Path, name: str) -> Path:
    """`name` (a path as the task saw it) under `root`, never escaping it through '..'."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".", "")]
    if ".." in parts:
        raise RecodeError(f"executable path {name!r} contains '..'")
    return root.joinpath(*parts)


class IsaRecode:
    """The stage: call it on an ImageSet. `root` is where the tasks' paths resolve (the container's root
    filesystem, "/" for a plain process). A subclass names the direction."""

    source_isa = ""
    target_isa = ""
    regset_size = 0

    def __init__(self, target: VdsoTemplate, root: str | Path = "/", *, target_criu: str = "",
                 regsets: Iterable[Regset] = ()) -> None:
        self.target = target
        self.root = Path(root)
        self.regsets = {r.pid: r for r in regsets}  # the notify's copies, by the dump's pids
        self.auxv_words = auxv_words(self.target_isa, target_criu)
        self._elves: dict[Path, ElfInfo] = {}  # tasks of one container mostly share their executables
        self._foreign_text: set[str] = set()  # other files' executable mappings with dumped pages
        self._unfiltered: set[int] = set()  # tasks whose seccomp filter was removed

    def _elf(self, path: Path) -> ElfInfo:
        if path not in self._elves:
            self._elves[path] = read_elf(path)
        return self._elves[path]

    def __call__(self, images: ImageSet) -> None:
        source = core_isa(images)
        if source != self.source_isa:
            raise RecodeError(f"{images.src}: recode to {self.target_isa} needs an {self.source_isa} dump, this one "
                              f"is {source}")
        if self.target.page_size != X86_64_PAGE_SIZE:
            # Every pagemap entry and VMA would have to be re-cut to another page size: not done (yet).
            raise RecodeError(f"target page size {self.target.page_size} differs from x86_64's {X86_64_PAGE_SIZE}")
        files = images.edit("files.img")
        for pid, threads in iter_tasks(images):
            self._task(images, files, pid, threads)
        for entry in files.entries:
            msg = entry.get(pb.file_entry)
            for part in (msg.reg if msg.HasField("reg") else None, msg.pipe if msg.HasField("pipe") else None):
                if part is not None and part.HasField("flags"):
                    part.flags = open_flags_for(part.flags, self.source_isa, self.target_isa)
        if self._unfiltered:
            images.warnings.append(
                f"the {self.source_isa} seccomp filter of task(s) {', '.join(map(str, sorted(self._unfiltered)))} "
                f"cannot filter {self.target_isa} system calls and was removed: on the target they run without "
                "seccomp")
        for vma_file in sorted(self._foreign_text):
            images.warnings.append(
                f"dumped pages lie in the executable mapping of {vma_file} (not a task's own binary): they are "
                f"{self.source_isa} code or data that the {self.target_isa} task will see as it was dumped")

    def _task(self, images: ImageSet, files: Image, pid: int, threads: list[int]) -> None:
        if len(threads) > 1:
            # Popcorn's regs_dst holds one register set per process: other threads' state has nowhere to go.
            raise RecodeError(f"task {pid} has {len(threads)} threads; only single-threaded tasks can be recoded")
        mm_image = images.edit(f"mm-{pid}.img")
        mm = mm_image.entries[0].get(pb.mm_entry)
        exe_entry = _exe_entry(files, mm.exe_file_id, pid)
        # The executable as CRIU will open it again: as the task's exe and as the file of its mappings.
        exe_files = [e for e in _regular_files(files) if e.reg.name == exe_entry.reg.name]
        exe = exe_path(self.root, exe_entry.reg.name)
        source_elf = self._elf(exe.with_name(exe.name + VARIANT_SUFFIX[self.source_isa]))
        target_elf = self._elf(exe.with_name(exe.name + VARIANT_SUFFIX[self.target_isa]))
        problems = popcorn_problems(source_elf, self.source_isa, (REGS_DST, TLS_DST)) + popcorn_problems(
            target_elf, self.target_isa, ())
        if problems:
            raise RecodeError(f"task {pid} ({exe_entry.reg.name}): {'; '.join(problems)}")

        pagemap_name = f"pagemap-{pid}.img"
        pagemap_image = images.edit(pagemap_name)
        page_size = self.target.page_size
        pagemap = Pagemap.from_entries(pagemap_image.entries, pagemap_name, page_size)
        regset, tls = _read_regset(images, pagemap, source_elf.symbols[REGS_DST].address,
                                   source_elf.symbols[TLS_DST].address, size=self.regset_size, pid=pid,
                                   captured=self.regsets.get(pid))

        for tid in threads:
            core_image = images.edit(f"core-{tid}.img")
            core = core_image.entries[0].get(pb.core_entry)
            if clear_seccomp(core):
                # A seccomp filter is BPF over the source ISA's syscall numbers that checks its audit arch: on
                # the other ISA it kills the task at its first system call (SIGSYS), so it cannot come along.
                self._unfiltered.add(pid)
            self._rewrite_core(core, regset, tls, f"task {pid}")

        removed = [(v.start, v.end) for v in mm.vmas if v.status & SPECIAL_AREAS]
        exe_text = self._text_mappings(mm, files, {e.id for e in exe_files}, pagemap)
        template_vma = next((v for v in mm.vmas if v.status & VMA_AREA_VDSO), None)
        vvar_start = _place(mm, removed, self.target.vvar_size + len(self.target.vdso_pages), page_size, pid)
        vdso_start = vvar_start + self.target.vvar_size
        _rewrite_vmas(mm, self.target, vvar_start, vdso_start, template_vma)
        _set_auxv(mm, AT_SYSINFO_EHDR, vdso_start)
        _trim_auxv(mm)
        dropped = _fit_auxv(mm, self.auxv_words, pid)
        if dropped:
            images.warnings.append(
                f"task {pid}'s auxiliary vector is longer than the {self.target_isa} CRIU takes "
                f"({self.auxv_words // 2} entries): the kernel's copy leaves out AT_ type(s) "
                f"{', '.join(map(str, dropped))} (only /proc/PID/auxv shows it; the program's own copy is whole)")
        segments = _rewrite_pagemap(pagemap_image, pagemap, removed + exe_text, vdso_start, self.target.vdso_pages)
        images.plan_pages(pagemap.pages_name, segments)

        for entry in exe_files:
            entry.reg.size = target_elf.size
            del entry.reg.build_id[:]
            entry.reg.build_id.extend(build_id_words(target_elf.build_id))

    def _rewrite_core(self, core: pb.core_entry, regset: bytes, tls: bytes, where: str) -> None:
        raise NotImplementedError

    def _text_mappings(self, mm: pb.mm_entry, files: Image, exe_ids: set[int],
                       pagemap: Pagemap) -> list[tuple[int, int]]:
        """The executable's private executable file mappings (their dumped pages are dropped), noting other
        files' executable mappings that have dumped pages (they cannot be right on the target)."""
        text = []
        for vma in mm.vmas:
            if not (vma.status & VMA_FILE_PRIVATE and vma.prot & PROT_EXEC):
                continue
            if vma.shmid in exe_ids:
                text.append((vma.start, vma.end))
            elif pagemap.has_pages(vma.start, vma.end):
                self._foreign_text.add(_file_name(files, vma.shmid))
        return text


class Aarch64Recode(IsaRecode):
    """x86_64 → aarch64 (the way out)."""

    source_isa, target_isa, regset_size = "x86_64", "aarch64", AARCH64_REGSET_SIZE

    def _rewrite_core(self, core: pb.core_entry, regset: bytes, tls: bytes, where: str) -> None:
        aarch64_core(core, AArch64Regs.unpack(regset, tls, where))


class X86_64Recode(IsaRecode):
    """aarch64 → x86_64 (the way back)."""

    source_isa, target_isa, regset_size = "aarch64", "x86_64", X86_64_REGSET_SIZE

    def _rewrite_core(self, core: pb.core_entry, regset: bytes, tls: bytes, where: str) -> None:
        x86_64_core(core, X86Regs.unpack(regset, tls, where))


def _clear_tid(core: pb.core_entry) -> int:
    return core.ti_aarch64.clear_tid_addr if core.HasField("ti_aarch64") else core.thread_info.clear_tid_addr


def aarch64_core(core: pb.core_entry, regs: AArch64Regs) -> None:
    """The core's registers become the aarch64 set the runtime left (whatever registers it held are dropped)."""
    clear_tid = _clear_tid(core)
    core.mtype = MTYPE_AARCH64
    core.ClearField("thread_info")
    core.ClearField("ti_aarch64")
    ti = core.ti_aarch64
    ti.clear_tid_addr = clear_tid
    ti.tls = regs.tls
    ti.gpregs.regs.extend(regs.x)
    ti.gpregs.sp = regs.sp
    ti.gpregs.pc = regs.pc
    ti.gpregs.pstate = AARCH64_PSTATE
    ti.fpsimd.vregs.extend(regs.vregs())
    ti.fpsimd.fpsr = 0
    ti.fpsimd.fpcr = 0


def x86_64_core(core: pb.core_entry, regs: X86Regs) -> None:
    """The core's registers become the x86_64 set the runtime left (whatever registers it held are dropped)."""
    clear_tid = _clear_tid(core)
    core.mtype = MTYPE_X86_64
    core.ClearField("ti_aarch64")
    core.ClearField("thread_info")
    ti = core.thread_info
    ti.clear_tid_addr = clear_tid
    gp = ti.gpregs
    for name, value in regs.gp.items():
        setattr(gp, name, value)
    gp.ip = regs.rip
    gp.orig_ax = NO_SYSCALL  # resumed at a function's entry, not inside a system call to restart
    gp.flags = regs.rflags | X86_64_FLAGS_BASE
    gp.cs, gp.ss = X86_64_USER_CS, X86_64_USER_SS  # the only valid ones for a 64-bit task
    gp.ds, gp.es, gp.fs, gp.gs = regs.segments[2:]
    gp.fs_base = regs.tls  # x86_64's thread pointer
    gp.gs_base = 0
    gp.mode = X86_64_REGS_NATIVE
    # CRIU's schema makes these fields required: each is set, zeros included.
    fp = ti.fpregs
    fp.cwd, fp.swd, fp.twd, fp.fop, fp.rip, fp.rdp = X86_64_FPU_CWD, 0, 0, 0, 0, 0
    fp.mxcsr, fp.mxcsr_mask = X86_64_MXCSR, X86_64_MXCSR_MASK
    fp.st_space.extend(_words(regs.st))
    fp.xmm_space.extend(_words(regs.xmm))
    for slot in X86_64_TLS_SLOTS:
        ti.tls.add(entry_number=slot, base_addr=0, limit=0, seg_32bit=False, contents_h=False,
                   contents_l=False, read_exec_only=True, limit_in_pages=False, seg_not_present=True,
                   usable=False)


def _exe_entry(files: Image, file_id: int, pid: int) -> pb.file_entry:
    for entry in files.entries:
        msg = entry.get(pb.file_entry)
        if msg.id == file_id and msg.HasField("reg"):
            return msg
    raise RecodeError(f"files.img: no regular file {file_id}, the executable of task {pid}")


def _regular_files(files: Image) -> list[pb.file_entry]:
    return [msg for msg in (e.get(pb.file_entry) for e in files.entries) if msg.HasField("reg")]


def _file_name(files: Image, file_id: int) -> str:
    return next((e.reg.name for e in _regular_files(files) if e.id == file_id), f"file {file_id}")


def _read_regset(images: ImageSet, pagemap: Pagemap, regs_addr: int, tls_addr: int, *, size: int,
                 pid: int, captured: Regset | None) -> tuple[bytes, bytes]:
    """The dumped bytes where the dump holds them, else the notify's copy."""
    where = f"task {pid}"
    try:
        with images.path(pagemap.pages_name).open("rb") as pages:
            return pagemap.read(pages, regs_addr, size), pagemap.read(pages, tls_addr, 8)
    except OSError as exc:
        raise RecodeError(f"{where}: cannot read {pagemap.pages_name}: {exc.strerror or exc}") from exc
    except ImageFormatError as exc:
        if captured is not None:
            return captured.regs[:size], captured.tls
        raise RecodeError(f"{where}: regs_dst/tls_dst not in the dumped pages ({exc}), and the notify read none "
                          "for it") from exc


def _overlaps(start: int, end: int, ranges: list[tuple[int, int]]) -> bool:
    return any(s < end and start < e for s, e in ranges)


def _place(mm: pb.mm_entry, removed: list[tuple[int, int]], size: int, page_size: int, pid: int) -> int:
    """Start of the target's [vvar][vdso] block: where the source's vvar/vdso were if the block fits there,
    else the highest free gap below them (the kernel maps top-down), else the lowest one above."""
    kept = sorted((v.start, v.end) for v in mm.vmas if not v.status & SPECIAL_AREAS)
    anchor = min((s for s, _ in removed if s < 1 << 47), default=None)
    if anchor is not None and anchor % page_size == 0 and not _overlaps(anchor, anchor + size, kept):
        return anchor
    candidates = []
    for (_, gap_start), (gap_end, _) in itertools.pairwise(kept):
        low = (gap_start + page_size - 1) // page_size * page_size
        top = (gap_end - size) // page_size * page_size
        if top >= low and top > 0:
            candidates.append(top)
    if not candidates:
        raise RecodeError(f"task {pid}: no free {size}-byte gap in the address space for the target vdso")
    pivot = anchor if anchor is not None else 1 << 47
    below = [c for c in candidates if c < pivot]
    return max(below) if below else min(candidates)


def _rewrite_vmas(mm: pb.mm_entry, target: VdsoTemplate, vvar_start: int, vdso_start: int,
                  template: pb.vma_entry | None) -> None:
    kept = [v for v in mm.vmas if not v.status & SPECIAL_AREAS]
    new: list[pb.vma_entry] = []
    if target.vvar_size:
        status = VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_VVAR
        vvar = pb.vma_entry(start=vvar_start, end=vdso_start, pgoff=0, shmid=0, prot=PROT_READ,
                            flags=MAP_PRIVATE | MAP_ANONYMOUS, status=status, fd=-1)
        new.append(vvar)
    vdso = pb.vma_entry()
    if template is not None:
        vdso.CopyFrom(template)  # keeps fields we do not declare (madv, fdflags, future ones)
    vdso.start, vdso.end = vdso_start, vdso_start + len(target.vdso_pages)
    vdso.pgoff, vdso.shmid, vdso.fd = 0, 0, -1
    vdso.prot = PROT_READ | PROT_EXEC
    vdso.flags = MAP_PRIVATE | MAP_ANONYMOUS
    vdso.status = VMA_AREA_REGULAR | VMA_AREA_VDSO | VMA_ANON_PRIVATE
    new.append(vdso)
    merged = sorted([*kept, *new], key=lambda v: v.start)
    copies = []
    for vma in merged:
        copy = pb.vma_entry()
        copy.CopyFrom(vma)
        copies.append(copy)
    del mm.vmas[:]
    mm.vmas.extend(copies)


def _set_auxv(mm: pb.mm_entry, key: int, value: int) -> None:
    """Point auxv entry `key` at `value`; a dump without it (the program never learnt where its vdso was)
    needs no fix."""
    auxv = mm.mm_saved_auxv
    for i in range(0, len(auxv) - 1, 2):
        if auxv[i] == key:
            auxv[i + 1] = value
            return


def _trim_auxv(mm: pb.mm_entry) -> None:
    """Keep the auxiliary vector's entries before AT_NULL. CRIU dumps the kernel's whole saved_auxv array, whose
    size is the ISA's (aarch64's is longer), and the target's CRIU refuses one longer than its own ("Image
    corrupted"): AT_NULL and the zeros after it carry nothing (the kernel's array ends in zeros anyway, and an
    x86_64 dump of a full vector has no AT_NULL at all)."""
    auxv = list(mm.mm_saved_auxv)
    for i in range(0, len(auxv) - 1, 2):
        if auxv[i] == 0:
            del mm.mm_saved_auxv[i:]
            return


def auxv_words(isa: str, criu_version: str) -> int:
    """The auxv words a CRIU of `isa` and this version restores (an unknown version: a current one)."""
    version = version_tuple(criu_version)
    if isa == "aarch64" and version is not None and version < AARCH64_AUXV_GREW:
        return AUXV_WORDS_AARCH64_BEFORE_4_1
    return AUXV_WORDS[isa]


def _fit_auxv(mm: pb.mm_entry, words: int, pid: int) -> list[int]:
    """Drop expendable entries (AUXV_EXPENDABLE's order) until the vector fits `words`; the types dropped. One that
    still does not fit is refused: every other entry describes the program itself."""
    pairs = list(zip(mm.mm_saved_auxv[::2], mm.mm_saved_auxv[1::2], strict=False))  # an odd last word: not a pair
    dropped: list[int] = []
    for key in AUXV_EXPENDABLE:
        if 2 * len(pairs) <= words:
            break
        if any(k == key for k, _ in pairs):
            pairs = [(k, v) for k, v in pairs if k != key]
            dropped.append(key)
    if 2 * len(pairs) > words:
        raise RecodeError(f"task {pid}: its auxiliary vector has {len(pairs)} entries, and the target's CRIU takes "
                          f"{words // 2}")
    if dropped:
        del mm.mm_saved_auxv[:]
        mm.mm_saved_auxv.extend(word for pair in pairs for word in pair)
    return dropped


def _rewrite_pagemap(image: Image, pagemap: Pagemap, removed: list[tuple[int, int]], vdso_start: int,
                     vdso_pages: bytes) -> list[Segment]:
    """Drop the removed areas' pages (splitting entries that straddle them), insert the target vdso's pages,
    and return the plan of the new pages file. Only PRESENT entries own bytes in the pages file."""
    page = pagemap.page_size
    head, *entries = image.entries
    placed: list[tuple[int, Entry, Segment | None]] = []  # (vaddr, entry, its bytes)
    for entry, run in zip(entries, pagemap.runs, strict=True):
        start, end = run.vaddr, run.vaddr + run.nr_pages * page
        pieces = _subtract(start, end, removed)
        if pieces == [(start, end)]:
            seg = CopyRange(run.pages_offset, end - start) if run.pages_offset is not None else None
            placed.append((start, entry, seg))
            continue
        msg = entry.get(pb.pagemap_entry)
        for lo, hi in pieces:
            piece = pb.pagemap_entry()
            piece.CopyFrom(msg)
            piece.vaddr = lo
            _set_nr_pages(piece, (hi - lo) // page)
            seg = CopyRange(run.pages_offset + (lo - start), hi - lo) if run.pages_offset is not None else None
            placed.append((lo, Entry.from_message(piece), seg))
    vdso = pb.pagemap_entry(vaddr=vdso_start, nr_pages=len(vdso_pages) // page, flags=PE_PRESENT)
    bisect.insort(placed, (vdso_start, Entry.from_message(vdso), NewBytes(vdso_pages)), key=lambda p: p[0])
    image.entries = [head, *(entry for _, entry, _ in placed)]
    return [seg for _, _, seg in placed if seg is not None]


def _subtract(start: int, end: int, removed: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = [(start, end)]
    for r_start, r_end in removed:
        next_pieces: list[tuple[int, int]] = []
        for lo, hi in pieces:
            if r_end <= lo or hi <= r_start:
                next_pieces.append((lo, hi))
                continue
            if lo < r_start:
                next_pieces.append((lo, r_start))
            if r_end < hi:
                next_pieces.append((r_end, hi))
        pieces = next_pieces
    return pieces


def _set_nr_pages(entry: pb.pagemap_entry, count: int) -> None:
    # Keep the entry's own convention: CRIU >= 4.2 writes the count in field 5 and 0 in field 2.
    if entry.HasField("nr_pages64"):
        entry.nr_pages64 = count
    else:
        entry.nr_pages = count

