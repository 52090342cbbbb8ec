"""The restorer's plan from an emulated process read out through qemu's stub (guest_state.py): the way home's
half that runs on the device. The restorer is a static x86_64 program, so at home it runs natively on the
plan as it ran under qemu here: no CRIU image is written.

What goes into the plan: every guest mapping below x86_64's user-space top with its memory (read from
/proc/<qemu>/mem), every thread with its registers, fs_base and FXSAVE image (x87/SSE), where glibc or musl keep
its TID, the working directory, its descriptors (guest_fds.py: files reopened, TCP and UDP sockets made
afresh), each thread's signal mask and, for a process with one thread, its signal actions (guest_signals.py;
the notes say when they are not carried). Robust lists: qemu has none to give. Mappings qemu placed above the
user-space top (its start-up pages) cannot exist natively and are left out, unless a thread's registers point
into one: then the plan is refused.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..protocol import restorer_plan as rp
from ..protocol.emulation import PLAN
from .errors import AgentError
from .guest_fds import GuestFds
from .guest_signals import MASK_SWAPPING, guest_mask, thread_masks
from .guest_state import GuestMapping, GuestState, GuestThread

USER_TOP = 1 << 47  # x86_64's user space with 4-level paging: what a native process can map
PAGES_NAME = "guest-pages.img"
GLIBC_TID_OFFSET = 0x2D0  # glibc: struct pthread's tid, also the thread's clear_child_tid
MUSL_TID_OFFSET = 48
CHUNK = 1 << 20
PAGE = 4096  # x86_64's, the guest's
ZERO_CHUNK = bytes(CHUNK)
SYSCALL = b"\x0f\x05"
_PROT = {"r": 1, "w": 2, "x": 4}


class GuestPlanRefused(AgentError):
    """The emulated process cannot be rebuilt natively from what was read out."""


@dataclass(frozen=True)
class GuestPlanSummary:
    threads: int
    vmas: int
    page_bytes: int
    notes: tuple[str, ...]


def fxsave(thread: GuestThread) -> bytes:
    """The 512-byte FXSAVE image of a thread's x87/SSE registers as the stub gave them."""
    image = bytearray(rp.FXSAVE_SIZE)
    tags = thread.value("ftag")  # the full tag word: 2 bits per register, 3 = empty
    abridged = sum(1 << i for i in range(8) if (tags >> (2 * i)) & 3 != 3)
    struct.pack_into("<HHBxHQQII", image, 0, thread.value("fctrl"), thread.value("fstat"), abridged,
                     thread.value("fop"), thread.value("fioff"), thread.value("fooff"), thread.value("mxcsr"),
                     0xFFFF)
    for i in range(8):
        image[32 + 16 * i:32 + 16 * i + 10] = thread.registers[f"st{i}"][:10]
    for i in range(16):
        image[160 + 16 * i:176 + 16 * i] = thread.registers[f"xmm{i}"][:16]
    return bytes(image)


NO_FDS = GuestFds((), ("descriptors above stdio are not carried",), ())


def write_plan(state: GuestState, qemu_pid: int, out: Path, *, mount: str, status: str | None = None,
               fds: GuestFds = NO_FDS, masks_before: dict[int, int] | None = None) -> GuestPlanSummary:
    """The plan (`out`/<PLAN>) and its pages (`out`/guest-pages.img) of the stopped guest; paths in the plan
    under `mount`, where the restorer will find them. `qemu_pid`: in our namespace (guest_state.host_pid);
    `fds`: its descriptors, read while it is frozen (guest_fds.py); `masks_before`: its threads' host masks
    (guest_signals.thread_masks) read before the stub stopped it, for the stopped thread's when the guest was
    not asked. Blocking. Raises GuestPlanRefused."""
    if fds.refused:  # before any page is read
        raise GuestPlanRefused("; ".join(fds.refused))
    notes = []
    if state.signals is None:
        notes.append("the signal actions are not carried: "
                     f"{state.signals_unread or 'they were not asked for'} (qemu keeps them)")
    elif state.signals.redelivered:
        notes.append(f"{len(state.signals.redelivered)} signal(s) that fell due while its signal state was "
                     "asked for were delivered afterwards")
    kept, dropped = _mappings(state)
    if dropped:
        notes.append(f"{len(dropped)} mapping(s) qemu placed above the x86_64 user space are left out")
    records = [rp.record(rp.R_STATUS, rp.string(status))] if status else []
    records.append(rp.record(rp.R_PAGES_FILE, rp.string(f"{mount}/{PAGES_NAME}")))
    if state.cwd:
        records.append(rp.record(rp.R_CWD, rp.string(state.cwd)))
    for m in kept:
        kind = _kind(m)
        records.append(rp.vma(m.start, m.end, pgoff=m.offset if kind == rp.VMA_FILE_PRIVATE else 0,
                              prot=_prot(m.perms), kind=kind, path=m.path if kind == rp.VMA_FILE_PRIVATE else ""))
    page_bytes = skipped = 0
    with (out / PAGES_NAME).open("wb") as pages, io.FileIO(f"/proc/{qemu_pid}/mem", "r") as mem:
        for m in kept:
            if "r" not in m.perms:
                continue  # a guard: nothing to read, nothing to fill
            anonymous = _kind(m) == rp.VMA_ANON
            mem.seek(m.start)
            left = m.end - m.start
            while left:
                at = m.end - left
                try:
                    chunk = mem.read(min(CHUNK, left))
                except OSError as exc:
                    raise GuestPlanRefused(f"guest memory at 0x{at:x} could not be read: {exc}") from exc
                if not chunk:
                    raise GuestPlanRefused(f"guest memory at 0x{at:x} could not be read")
                carried = 0
                for start, end in _carried(chunk, anonymous):
                    records.append(rp.pages(at + start, end - start, pages.tell()))
                    pages.write(chunk[start:end])
                    carried += end - start
                page_bytes += carried
                skipped += len(chunk) - carried
                left -= len(chunk)
        masks = thread_masks(qemu_pid)
        for thread in state.threads:
            records.append(_thread(state, thread, mem, notes, _mask(state, thread, masks, masks_before, notes)))
    if state.signals is not None:
        records += [rp.sigaction(a.signo, a.handler, a.flags, a.restorer, a.mask)
                    for a in state.signals.actions if not a.default()]
    if skipped:
        notes.append(f"{skipped} bytes of all-zero anonymous pages not sent (the restorer maps them zero-filled)")
    records += [f.record() for f in fds.files]
    notes += fds.notes
    tmp = out / (PLAN + ".tmp")
    tmp.write_bytes(rp.plan(records))
    os.replace(tmp, out / PLAN)
    return GuestPlanSummary(len(state.threads), len(kept), page_bytes, tuple(notes))


def _carried(chunk: bytes, anonymous: bool) -> list[tuple[int, int]]:
    """The runs of `chunk` (offsets) that go into the pages file: all of it, or for anonymous memory — which
    the restorer maps zero-filled — its pages that are not all zero (a thread's stack, a heap's untouched
    tail: never read at home, never sent)."""
    if not anonymous:
        return [(0, len(chunk))]
    if chunk == ZERO_CHUNK[:len(chunk)]:
        return []
    runs: list[tuple[int, int]] = []
    for offset in range(0, len(chunk), PAGE):
        if chunk[offset:offset + PAGE] == ZERO_CHUNK[:PAGE]:
            continue
        end = min(offset + PAGE, len(chunk))
        if runs and runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((offset, end))
    return runs


def _mappings(state: GuestState) -> tuple[list[GuestMapping], list[GuestMapping]]:
    kept, dropped = [], []
    for m in state.maps:
        if m.path == "[vsyscall]":
            continue  # the kernel's (qemu's, here): never the process's own
        if m.end > USER_TOP:
            dropped.append(m)
            continue
        if m.perms[3:4] == "s":
            raise GuestPlanRefused(f"mapping 0x{m.start:x}-0x{m.end:x} {m.path} is shared: not carried yet")
        kept.append(m)
    for thread in state.threads:
        for name in ("rip", "rsp", "fs_base"):
            value = thread.value(name)
            if value and value >= USER_TOP:
                raise GuestPlanRefused(f"thread {thread.tid}: {name} 0x{value:x} lies above the x86_64 user space")
    return kept, dropped


def _kind(m: GuestMapping) -> int:
    if m.path == "[vdso]":
        return rp.VMA_VDSO  # its pages are carried as plain memory, as on the way out
    if m.path.startswith("/") and not m.path.endswith(" (deleted)"):
        return rp.VMA_FILE_PRIVATE
    return rp.VMA_ANON


def _prot(perms: str) -> int:
    return sum(bit for flag, bit in _PROT.items() if flag in perms[:3])


def _mask(state: GuestState, thread: GuestThread, masks: dict[int, int], masks_before: dict[int, int] | None,
          notes: list[str]) -> int:
    """The thread's signal mask: as the guest said it (the thread that was asked); else from its host mask,
    which qemu keeps equal to the guest's (`masks`: now, by the ids the stub names) — but the stopped thread's
    shows every signal blocked while the stub holds it, so its mask is the one it had before (`masks_before`)."""
    if state.signals is not None and thread.tid == state.signals.thread:
        return state.signals.mask
    host = (masks_before or {}).get(thread.tid) if thread.tid == state.stopped else masks.get(thread.tid)
    if host is None:
        notes.append(f"thread {thread.tid}: its signal mask could not be read (it is carried empty)")
        return 0
    if not thread.returned and "orig_rax" in thread.registers \
            and thread.value("rax") == thread.value("orig_rax") in MASK_SWAPPING:
        notes.append(f"thread {thread.tid} waits in syscall {thread.value('orig_rax')} with a mask of its own: "
                     "that mask is carried as its signal mask")
    return guest_mask(host)


def _thread(state: GuestState, thread: GuestThread, mem: io.FileIO, notes: list[str], sigmask: int) -> bytes:
    fs_base = thread.value("fs_base")
    tid_address = 0
    for offset in (GLIBC_TID_OFFSET, MUSL_TID_OFFSET):
        if fs_base and _word(mem, fs_base + offset) == thread.tid:
            tid_address = fs_base + offset
            break
    if not tid_address:
        notes.append(f"thread {thread.tid}: its libc's copy of its TID was not found")
    clear_tid = tid_address if tid_address == fs_base + GLIBC_TID_OFFSET else 0
    gp = {name: thread.value(name) for name in rp.GP_ORDER}
    if thread.returned:
        notes.append(f"thread {thread.tid}: its syscall ended after the stop, and it was read again")
    elif _in_syscall(thread, mem):
        # Stopped inside a syscall that has not returned (qemu writes rax only on its return): it runs again
        # natively, as the kernel restarts an interrupted one. Ambiguous when a syscall returned its own number
        # before the stop (one that ended after it is `returned`: guest_window.py).
        gp["rip"] -= len(SYSCALL)
    return rp.Thread(thread.tid, thread.tid == state.pid, clear_tid, sigmask, fs_base, thread.value("gs_base"), 0, 0,
                     tid_address, [gp[name] for name in rp.GP_ORDER], fxsave(thread)).pack()


def _in_syscall(thread: GuestThread, mem: io.FileIO) -> bool:
    if "orig_rax" not in thread.registers or thread.value("rax") != thread.value("orig_rax"):
        return False
    rip = thread.value("rip")
    try:
        mem.seek(rip - len(SYSCALL))
        return mem.read(len(SYSCALL)) == SYSCALL
    except OSError:
        return False


def _word(mem: io.FileIO, address: int) -> int | None:
    try:
        mem.seek(address)
        data = mem.read(4)
    except OSError:
        return None
    return int.from_bytes(data, "little") if len(data) == 4 else None
