"""The restore plan: what restorer.c needs from a CRIU dump, in one flat little-endian file.

make_plan() reads a `criu dump` directory with our codec, refuses by name whatever the restorer cannot
restore (EmulationRefused), and writes the plan. Page contents stay in pages-N.img: the plan only holds
their offsets, and the restorer preads them from the images directory mounted at `mount`. The format is
described in docs/emulation.md. Blocking: run it in a thread from async code.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import AndrocondError
from ..images import PE_LAZY, PE_PARENT, Entry, Image, Pagemap, pb, read_image
from ..protocol import emulation
from ..protocol import restorer_plan as rp
from ..protocol.restorer_plan import (
    AF_INET,
    AF_INET6,
    FD_FILE,
    FD_LISTEN,
    O_NONBLOCK,
    R_CWD,
    R_PAGES_FILE,
    R_STATUS,
    R_STUB,
    SOCK_DGRAM,
    SOCK_STREAM,
    TCP_CLOSE,
    TCP_LISTEN,
    VMA_ANON,
    VMA_FILE_PRIVATE,
    VMA_FILE_SHARED,
    VMA_VDSO,
    VMA_VVAR,
)
from . import wire

# The names the device uses too (the agent mounts the directory and makes the status FIFO).
MOUNT: Final = emulation.MOUNT
PLAN_NAME: Final = emulation.PLAN
RESTORER_NAME: Final = emulation.RESTORER
STATUS_NAME: Final = emulation.STATUS

PAGE_SIZE: Final = 4096

# vma_entry.status bits (CRIU-IMAGES.md section 4)
VMA_AREA_VSYSCALL: Final = 1 << 2
VMA_AREA_VDSO: Final = 1 << 3
VMA_FILE_PRIVATE_BIT: Final = 1 << 6
VMA_FILE_SHARED_BIT: Final = 1 << 7
VMA_AREA_VVAR: Final = 1 << 12
UNSUPPORTED_VMA: Final = {
    1 << 8: "shared anonymous memory",
    1 << 10: "SysV shared memory",
    1 << 11: "a packet socket ring",
    1 << 13: "an AIO ring",
    1 << 14: "a memfd mapping",
    1 << 15: "a shadow stack",
    1 << 17: "uprobes",
    1 << 27: "a plugin's mapping",
    1 << 31: "an unsupported mapping",
}

# file_entry.type (fd_types)
FD_TYPES: Final = {
    0: "unknown file",
    1: "regular file",
    2: "pipe",
    3: "FIFO",
    4: "inet socket",
    5: "unix socket",
    6: "eventfd",
    7: "epoll",
    8: "inotify",
    9: "signalfd",
    10: "packet socket",
    11: "tty",
    12: "fanotify",
    13: "netlink socket",
    14: "namespace file",
    15: "tun device",
    16: "external file",
    17: "timerfd",
    18: "memfd",
    19: "BPF map",
    20: "pidfd",
}
FD_REG, FD_PIPE, FD_FIFO, FD_INETSK, FD_TTY = 1, 2, 3, 4, 11
STDIO_KINDS: Final = {FD_PIPE, FD_FIFO, FD_TTY}

SS_DISABLE: Final = 2
AVX512_XSTATE: Final = 0xE0  # xstate_bv bits 5-7: opmask, ZMM_Hi256, Hi16_ZMM
SIGNALS: Final = [s for s in range(1, 65) if s not in (9, 19)]  # CRIU dumps every signal but SIGKILL/SIGSTOP
# What the source process must be started with (docs/emulation.md): no CPU features the emulator lacks, and
# no rseq (qemu has none: glibc aborts in pthread_create when a thread of a process that had rseq cannot).
GLIBC_TUNABLES: Final = (
    "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-RTM,-XSAVEC:glibc.pthread.rseq=0"
)
TUNABLES_HINT: Final = f"start it with GLIBC_TUNABLES={GLIBC_TUNABLES}"


class EmulationRefused(AndrocondError):
    """The dump holds something the emulation restorer cannot restore; `reasons` names each one."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("cannot resume under emulation: " + "; ".join(reasons))
        self.reasons = tuple(reasons)


@dataclass(frozen=True)
class PlanSummary:
    pid: int
    threads: int
    vmas: int
    page_bytes: int
    fds: int  # fds the restorer reopens (stdio left to the new container is not counted)
    listening: int  # listening sockets recreated
    notes: tuple[str, ...]  # what was dropped or left to the new container, for people


def entrypoint(emulator: str, mount: str = MOUNT, *, stub: bool = False) -> list[str]:
    """The new container's argv. `-B 0` pins guest_base to 0 (qemu also picks it for the non-PIE
    restorer): guest addresses must be host addresses for the dumped layout to be recreated. With `stub`,
    qemu's gdb stub listens (without stopping the guest), so that the process can be read out later."""
    stub_options = emulation.stub_argv() if stub else []
    return [emulator, "-B", "0", *stub_options, f"{mount}/{RESTORER_NAME}", f"{mount}/{PLAN_NAME}"]


# ---- encoding ----


@dataclass
class _Fd:
    fd: int
    kind: int
    flags: int
    fdflags: int
    pos: int = 0
    family: int = 0
    type: int = 0
    proto: int = 0
    port: int = 0
    backlog: int = 0
    v6only: int = 0
    addr: bytes = b""
    path: str = ""

    def record(self) -> bytes:
        if self.kind == FD_FILE:
            return rp.fd_file(self.fd, self.flags, self.fdflags, self.pos, self.path)
        return rp.fd_socket(self.fd, self.kind, self.flags, self.fdflags, family=self.family, type=self.type,
                            proto=self.proto, port=self.port, backlog=self.backlog, v6only=self.v6only,
                            addr=self.addr)


def _fxsave(fp: pb.user_x86_fpregs_entry | None) -> bytes:
    """The 512-byte FXSAVE image rt_sigreturn restores (x87/SSE only: YMM and above are dropped)."""
    image = bytearray(512)
    if fp is None:
        struct.pack_into("<HHHHQQII", image, 0, 0x37F, 0, 0, 0, 0, 0, 0x1F80, 0xFFFF)
        return bytes(image)
    struct.pack_into("<HHHHQQII", image, 0, fp.cwd, fp.swd, fp.twd, fp.fop, fp.rip, fp.rdp, fp.mxcsr, fp.mxcsr_mask)
    st, xmm = list(fp.st_space)[:32], list(fp.xmm_space)[:64]
    struct.pack_into(f"<{len(st)}I", image, 32, *st)
    struct.pack_into(f"<{len(xmm)}I", image, 160, *xmm)
    return bytes(image)  # bytes 464..511 (sw_reserved) stay zero: an FXSAVE-only frame, no XSAVE magic


# ---- reading the dump ----


class _Dump:
    def __init__(self, images: Path) -> None:
        self.dir = images
        self.refusals: list[str] = []
        self.notes: list[str] = []

    def image(self, name: str) -> Image:
        path = self.dir / name
        if not path.is_file():
            raise EmulationRefused([f"{name} missing from {self.dir.name}: not a complete CRIU dump"])
        return read_image(path)

    def refuse(self, reason: str) -> None:
        self.refusals.append(reason)


def _fields(entry: Entry) -> wire.Fields:
    return wire.parse(entry.raw)


def make_plan(images: Path, out: Path, *, mount: str = MOUNT, status: str | None = None,
              stub: str | None = None) -> PlanSummary:
    """Write the plan for the dump in `images` to `out`; `status` defaults to `<mount>/<STATUS_NAME>`. `stub`:
    the path of the emulator's gdb stub socket, whose fd the restorer moves out of the dumped fds' way.

    Raises EmulationRefused naming every process, thread, mapping or fd the restorer cannot restore."""
    images = Path(images)
    dump = _Dump(images)
    status = status if status is not None else f"{mount}/{STATUS_NAME}"

    tree = [e.get(pb.pstree_entry) for e in dump.image("pstree.img").entries]
    if len(tree) != 1:
        pids = ", ".join(str(p.pid) for p in tree)
        raise EmulationRefused([f"the dump holds {len(tree)} processes (pids {pids}): only one can be resumed"])
    pid = tree[0].pid
    tids = list(tree[0].threads) or [pid]
    if pid in tids:  # the main thread first
        tids.remove(pid)
    tids.insert(0, pid)

    ids = wire.parse(dump.image(f"ids-{pid}.img").entries[0].raw) if (images / f"ids-{pid}.img").is_file() else {}
    cores = {tid: dump.image(f"core-{tid}.img").entries[0] for tid in tids}
    main_core = cores[pid].get(pb.core_entry)
    if not ids:
        ids = wire.get_message(_fields(cores[pid]), 4) or {}
    files_id = wire.get_int(ids, 2)

    records: list[bytes] = [rp.record(R_STATUS, rp.string(status))]
    if stub:
        records.append(rp.record(R_STUB, rp.string(stub)))
    files = _files(dump)
    vmas, vma_ranges = _vmas(dump, pid, files)
    page_records, page_bytes, pages_name = _pages(dump, pid, vma_ranges)
    if pages_name:
        records.append(rp.record(R_PAGES_FILE, rp.string(f"{mount}/{pages_name}")))
    cwd = _cwd(dump, pid, files)
    if cwd:
        records.append(rp.record(R_CWD, rp.string(cwd)))
    records += vmas + page_records
    fds = _fds(dump, files_id, files)
    records += [f.record() for f in fds]
    records += _sigactions(dump, pid, cores[pid])
    _check_locks(dump)
    records += [_thread(dump, pid, tid, cores[tid], main_core) for tid in tids]

    if dump.refusals:
        raise EmulationRefused(dump.refusals)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(rp.plan(records))
    os.replace(tmp, out)
    return PlanSummary(
        pid=pid,
        threads=len(tids),
        vmas=len(vmas),
        page_bytes=page_bytes,
        fds=len(fds),
        listening=sum(1 for f in fds if f.kind == FD_LISTEN),
        notes=tuple(dump.notes),
    )


def _files(dump: _Dump) -> dict[int, tuple[int, wire.Fields]]:
    """files.img by id: (type, the file_entry's fields)."""
    result: dict[int, tuple[int, wire.Fields]] = {}
    for entry in dump.image("files.img").entries:
        fields = _fields(entry)
        result[wire.get_int(fields, 2)] = (wire.get_int(fields, 1), fields)
    return result


def _reg(files: dict[int, tuple[int, wire.Fields]], file_id: int) -> pb.reg_file_entry | None:
    found = files.get(file_id)
    if found is None or found[0] != FD_REG:
        return None
    data = wire.get_bytes(found[1], 3)
    return None if data is None else pb.reg_file_entry.FromString(data)


Files = dict[int, tuple[int, wire.Fields]]
Ranges = list[tuple[int, int, int]]


def _vmas(dump: _Dump, pid: int, files: Files) -> tuple[list[bytes], Ranges]:
    mm = dump.image(f"mm-{pid}.img").entries[0].get(pb.mm_entry)
    records: list[bytes] = []
    ranges: list[tuple[int, int, int]] = []
    for vma in mm.vmas:
        where = f"process {pid}: mapping 0x{vma.start:x}-0x{vma.end:x}"
        if vma.status & VMA_AREA_VSYSCALL:
            continue  # the kernel's (or nobody's, under qemu): never the process's own
        bad = [what for bit, what in UNSUPPORTED_VMA.items() if vma.status & bit]
        if bad:
            dump.refuse(f"{where} is {bad[0]}")
            continue
        path, open_flags = "", 0
        if vma.status & (VMA_FILE_PRIVATE_BIT | VMA_FILE_SHARED_BIT):
            reg = _reg(files, vma.shmid)
            if reg is None:
                dump.refuse(f"{where} maps file id {vma.shmid}, which is not a regular file")
                continue
            path = reg.name
            kind = VMA_FILE_SHARED if vma.status & VMA_FILE_SHARED_BIT else VMA_FILE_PRIVATE
            open_flags = vma.fdflags
        elif vma.status & VMA_AREA_VDSO:
            kind = VMA_VDSO
        elif vma.status & VMA_AREA_VVAR:
            kind = VMA_VVAR
        elif vma.flags & 1:  # MAP_SHARED anonymous without the status bit
            dump.refuse(f"{where} is shared anonymous memory")
            continue
        else:
            kind = VMA_ANON
        records.append(rp.vma(vma.start, vma.end, pgoff=vma.pgoff, prot=vma.prot, kind=kind, open_flags=open_flags,
                              path=path))
        ranges.append((vma.start, vma.end, kind))
    return records, ranges


def _pages(dump: _Dump, pid: int, ranges: list[tuple[int, int, int]]) -> tuple[list[bytes], int, str]:
    path = dump.dir / f"pagemap-{pid}.img"
    if not path.is_file():
        dump.refuse(f"process {pid}: pagemap-{pid}.img missing")
        return [], 0, ""
    pagemap = Pagemap.load(path, PAGE_SIZE)
    pages_file = dump.dir / pagemap.pages_name
    size = pages_file.stat().st_size if pages_file.is_file() else 0
    pagemap.check_pages_size(size)
    records: list[bytes] = []
    total = 0
    for run in pagemap.runs:
        start, end = run.vaddr, run.vaddr + run.nr_pages * PAGE_SIZE
        if run.flags & PE_PARENT:
            dump.refuse(f"process {pid}: pages at 0x{start:x} are in a parent dump (pre-dump), not in this one")
            continue
        if run.pages_offset is None:
            if run.flags & PE_LAZY:
                dump.refuse(f"process {pid}: pages at 0x{start:x} are lazy (left on the source)")
            continue
        # CRIU merges adjacent runs across mappings: split the run at mapping boundaries.
        covered = 0
        for low, high, kind in ranges:
            part_start, part_end = max(low, start), min(high, end)
            if part_start >= part_end:
                continue
            covered += part_end - part_start
            if kind == VMA_VVAR:
                continue  # [vvar] stays zero: the vDSO then falls back to real syscalls
            offset = run.pages_offset + part_start - start
            records.append(rp.pages(part_start, part_end - part_start, offset))
            total += part_end - part_start
        if covered != end - start:
            dump.refuse(f"process {pid}: dumped pages 0x{start:x}-0x{end:x} lie outside every restored mapping")
    return records, total, pagemap.pages_name if total else ""


def _cwd(dump: _Dump, pid: int, files: dict[int, tuple[int, wire.Fields]]) -> str:
    path = dump.dir / f"fs-{pid}.img"
    if not path.is_file():
        return ""
    fields = _fields(read_image(path).entries[0])
    cwd = _reg(files, wire.get_int(fields, 1))
    root = _reg(files, wire.get_int(fields, 2))
    if root is not None and root.name != "/":
        dump.notes.append(f"process {pid}: its root {root.name} is not restored (it runs in the container's /)")
    return cwd.name if cwd is not None else ""


def _fds(dump: _Dump, files_id: int, files: dict[int, tuple[int, wire.Fields]]) -> list[_Fd]:
    result: list[_Fd] = []
    for entry in dump.image(f"fdinfo-{files_id}.img").entries:
        info = entry.get(pb.fdinfo_entry)
        fd, fdflags = info.fd, info.flags
        found = files.get(info.id)
        kind = found[0] if found else info.type
        name = FD_TYPES.get(kind, f"file of type {kind}")
        where = f"fd {fd}"
        if kind in STDIO_KINDS:
            if fd <= 2:
                dump.notes.append(f"{where} ({name}) is the new container's own")
            else:
                dump.refuse(f"{where} is a {name}: only stdio (fds 0-2) may be one")
            continue
        if kind == FD_REG and found is not None:
            reg = _reg(files, info.id)
            assert reg is not None
            mode = reg.mode if reg.HasField("mode") else stat.S_IFREG
            if fd <= 2 and stat.S_ISCHR(mode):
                dump.notes.append(f"{where} ({reg.name}) is the new container's own")
                continue
            if reg.name.endswith(" (deleted)"):
                dump.refuse(f"{where} is the deleted file {reg.name}")
                continue
            result.append(_Fd(fd, FD_FILE, reg.flags, fdflags, pos=reg.pos, path=reg.name))
            continue
        if kind == FD_INETSK and found is not None:
            sock = _inet(dump, where, fd, fdflags, wire.get_message(found[1], 4) or {})
            if sock is not None:
                result.append(sock)
            continue
        dump.refuse(f"{where} is a {name}, which the restorer cannot recreate")
    return result


def _address(family: int, words: list[int]) -> tuple[bytes, str]:
    count = 1 if family == AF_INET else 4
    raw = struct.pack(f"<{count}I", *(words + [0] * count)[:count])
    text = str(ipaddress.IPv4Address(raw) if family == AF_INET else ipaddress.IPv6Address(raw))
    return raw, text


def _inet(dump: _Dump, where: str, fd: int, fdflags: int, isk: wire.Fields) -> _Fd | None:
    family, stype, proto = wire.get_int(isk, 3), wire.get_int(isk, 4), wire.get_int(isk, 5)
    state, sport, dport = wire.get_int(isk, 6), wire.get_int(isk, 7), wire.get_int(isk, 8)
    if family not in (AF_INET, AF_INET6) or stype not in (SOCK_STREAM, SOCK_DGRAM):
        dump.refuse(f"{where} is an inet socket of family {family} type {stype}, which the restorer cannot recreate")
        return None
    addr, text = _address(family, wire.get_ints(isk, 11))
    _, peer = _address(family, wire.get_ints(isk, 12))
    sock = _Fd(
        fd,
        rp.socket_kind(stype, state, sport),
        wire.get_int(isk, 9) & O_NONBLOCK,
        fdflags,
        family=family,
        type=stype,
        proto=proto,
        port=sport,
        backlog=wire.get_int(isk, 10),
        v6only=wire.get_int(isk, 15),
        addr=addr,
    )
    proto_name = "TCP" if stype == SOCK_STREAM else "UDP"
    if stype == SOCK_STREAM and state not in (TCP_CLOSE, TCP_LISTEN):
        dump.notes.append(
            f"{where}: the TCP connection {text}:{sport} <-> {peer}:{dport} is closed "
            "(a fresh unconnected socket takes its place)"
        )
    elif sport:
        if stype == SOCK_DGRAM and dport:
            dump.notes.append(f"{where}: the UDP socket on {text}:{sport} is no longer connected to {peer}:{dport}")
    elif dport:
        dump.notes.append(f"{where}: the {proto_name} socket is no longer connected to {peer}:{dport}")
    return sock


def _sigactions(dump: _Dump, pid: int, core: Entry) -> list[bytes]:
    tc = wire.get_message(_fields(core), 3) or {}
    records: list[bytes] = []
    for signo, sa in zip(SIGNALS, wire.get_messages(tc, 15), strict=False):
        handler, flags = wire.get_int(sa, 1), wire.get_int(sa, 2)
        restorer, mask = wire.get_int(sa, 3), wire.get_int(sa, 4)
        if wire.get_int(sa, 5):
            dump.refuse(f"process {pid}: signal {signo} has a 32-bit (compat) action")
            continue
        if handler == flags == mask == 0:
            continue  # SIG_DFL with nothing else: the default already
        records.append(rp.sigaction(signo, handler, flags, restorer, mask))
    _check_pending(dump, f"process {pid}", wire.get_message(tc, 10))
    timers = wire.get_message(tc, 7) or {}
    itimers = [wire.get_ints(t, n) for n in (1, 2, 3) for t in wire.get_messages(timers, n)]
    if any(any(v) for v in itimers) or timers.get(4):
        dump.refuse(f"process {pid} has interval or POSIX timers armed, which the restorer cannot re-arm")
    return records


def _check_pending(dump: _Dump, who: str, queue: wire.Fields | None) -> None:
    if queue and queue.get(1):
        dump.refuse(f"{who} has {len(queue[1])} pending signal(s), which the restorer cannot queue again")


def _check_locks(dump: _Dump) -> None:
    for path in sorted(dump.dir.glob("file-locks*.img")):
        count = len(read_image(path).entries)
        if count:
            dump.refuse(f"the process holds {count} file lock(s) ({path.name})")


# Where a libc keeps a thread's TID in its thread descriptor (x86_64, at the thread pointer fs_base): glibc's
# `struct pthread` (2.26 and later), which is also its clear_child_tid; musl's (1.1 and 1.2), whose
# clear_child_tid is instead the global thread-list lock.
GLIBC_TID_OFFSET: Final = 0x2D0
MUSL_TID_OFFSET: Final = 48


def _dumped_word(dump: _Dump, pid: int, addr: int) -> int | None:
    """The 32-bit word at `addr` in the dumped memory, None when that page was not dumped."""
    path = dump.dir / f"pagemap-{pid}.img"
    if not addr or not path.is_file():
        return None
    pagemap = Pagemap.load(path, PAGE_SIZE)
    offset = pagemap.file_offset(addr)
    if offset is None or pagemap.file_offset(addr + 3) != offset + 3:
        return None
    with (dump.dir / pagemap.pages_name).open("rb") as pages:
        pages.seek(offset)
        word = pages.read(4)
    return int.from_bytes(word, "little") if len(word) == 4 else None


def _tid_address(dump: _Dump, pid: int, tid: int, clear_tid: int, fs_base: int) -> int:
    """Where the thread's libc keeps its TID, which the restorer overwrites with the new one (pthread_join,
    pthread_kill and glibc's lock owners read it); 0 when it cannot be told, then nothing is written there."""
    candidates = [fs_base + MUSL_TID_OFFSET] if fs_base else []
    if fs_base and clear_tid == fs_base + GLIBC_TID_OFFSET:
        candidates.insert(0, clear_tid)
    for addr in candidates:
        if _dumped_word(dump, pid, addr) == tid:
            return addr
    if fs_base:
        dump.notes.append(f"thread {tid}: its libc's copy of its TID was not found; the new TID is not written "
                          "there (joining or signalling it by pthread_t may fail)")
    return 0


def _thread(dump: _Dump, pid: int, tid: int, entry: Entry, main_core: pb.core_entry) -> bytes:
    is_main = tid == pid
    core = entry.get(pb.core_entry)
    who = f"thread {tid}"
    if core.mtype != 1 or not core.HasField("thread_info"):
        dump.refuse(f"{who} is not x86_64 (mtype {core.mtype})")
        return b""
    info = core.thread_info
    regs = info.gpregs
    if regs.HasField("mode") and regs.mode != 1:
        dump.refuse(f"{who} runs 32-bit (compat) code")
    fp = info.fpregs if info.HasField("fpregs") else None
    if fp is not None and fp.HasField("xsave") and fp.xsave.xstate_bv & AVX512_XSTATE:
        dump.refuse(
            f"{who} has AVX-512 state in use (xstate_bv 0x{fp.xsave.xstate_bv:x}), which the emulator lacks: "
            + TUNABLES_HINT
        )
    tcore_fields = wire.get_message(_fields(entry), 5) or {}
    _check_pending(dump, who, wire.get_message(tcore_fields, 9))
    rseq = wire.get_message(tcore_fields, 15)
    if rseq and wire.get_int(rseq, 1):
        dump.refuse(
            f"{who} has rseq registered, which the emulator lacks (glibc would abort in its next "
            "pthread_create): " + TUNABLES_HINT
        )
    sas = wire.get_message(tcore_fields, 7)
    if sas and wire.get_int(sas, 2) and not wire.get_int(sas, 3) & SS_DISABLE:
        dump.notes.append(f"{who}: its alternate signal stack is not restored")
    tcore = core.thread_core
    if tcore.seccomp_mode:
        dump.notes.append(f"{who}: its seccomp filter is not restored (the new container's own applies)")
    if tcore.HasField("blk_sigset"):
        sigmask = tcore.blk_sigset
    else:
        sigmask = core.tc.blk_sigset if core.HasField("tc") else main_core.tc.blk_sigset
    gp = [regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15, regs.di, regs.si]
    gp += [regs.bp, regs.bx, regs.dx, regs.ax, regs.cx, regs.sp, regs.ip, regs.flags]
    return rp.Thread(tid, is_main, info.clear_tid_addr, sigmask, regs.fs_base, regs.gs_base, tcore.futex_rla,
                     tcore.futex_rla_len, _tid_address(dump, pid, tid, info.clear_tid_addr, regs.fs_base), gp,
                     _fxsave(fp)).pack()
