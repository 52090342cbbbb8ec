"""An emulated process's signal state, which qemu keeps to itself: the guest's signal actions live in qemu's own
table (the host sees qemu's handlers, not the program's), so the way home asks the guest for them.

How: while the stub holds the guest stopped, the thread the stub stopped runs `rt_sigaction(sig, NULL, buf)`
for each signal, and `rt_sigprocmask` for its own mask. Each call is one single step of that thread with its
registers set for the call: `rip` at a `syscall; ret` already in its executable memory (nothing is written into
code, which qemu has translated), `rsp` at a scratch frame below its red zone whose return address is the same
site, and the answer in that frame. A step runs the syscall and the `ret`; the step is done when `rsp` has moved
past the return address (qemu may stop in between, for a signal). Its registers are put back afterwards, byte
for byte. Only a guest with one thread is asked (guest_state.read_out): qemu's stub resumes every thread for a
step and does not stop the others again (seen with qemu 10.0.13), so their registers would be read while they
run.

A guest signal that falls due while it steps is shown to the stub before it is delivered, and at the call's
registers the next step drops it: it is remembered and delivered once the thread has its own registers back,
as if it had come just before the stop.

The masks of a guest that is not asked come from the host: qemu keeps each guest thread's host mask equal to
its guest mask, in host numbers, and `guest_mask` maps them back (seen with qemu 10.0.13: the guest's SIGABRT is
the host's 35, its 32–60 the host's 36–64; 61–64 have no host signal). The stopped thread's host mask shows
every signal blocked while the stub holds it: its mask is read before the stub is reached. A thread waiting
in a syscall that swaps in a mask of its own (sigsuspend, ppoll, pselect, epoll_pwait) shows that one.

No robust lists to carry: qemu answers `set_robust_list` with ENOSYS, so a libc under it registers none.
"""

from __future__ import annotations

import asyncio
import io
import struct
from pathlib import Path

from .gdb_remote import GdbRemote, GdbRemoteError
from .guest_state import GuestMapping, GuestSignals, Register, SigAction, SignalsUnread, guest_tasks, task_status

SYSCALL_RET = b"\x0f\x05\xc3"  # syscall; ret
SITE_SEARCH_LIMIT = 64 << 20  # bytes of executable memory searched for SYSCALL_RET
NR_RT_SIGACTION = 13
NR_RT_SIGPROCMASK = 14
SIG_BLOCK = 0
SIGKILL, SIGSTOP = 9, 19
SIGNALS = tuple(s for s in range(1, 65) if s not in (SIGKILL, SIGSTOP))
GDB_SIGTRAP = 5  # the stop a finished step reports
RED_ZONE = 128
SCRATCH = 4096  # below the red zone: where the call's frame goes
ANSWER = 32  # struct k_sigaction: handler, flags, restorer, mask
STEPS_PER_CALL = 8  # a call is two instructions; more stops than this is not a step that ends
# Syscalls (x86_64) that wait with a mask of their own in place of the thread's: rt_sigsuspend, pselect6,
# ppoll, epoll_pwait, epoll_pwait2.
MASK_SWAPPING = frozenset({130, 270, 271, 281, 441})
_HOST_RT_FIRST, _GUEST_RT_FIRST = 36, 32
_HOST_SIGABRT_AT, _SIGABRT = 35, 6


def guest_mask(host: int) -> int:
    """A qemu thread's host signal mask (bit n-1: signal n) in the guest's numbers."""
    guest = 0
    for signo in range(1, 65):
        if not host >> (signo - 1) & 1:
            continue
        if signo == _HOST_SIGABRT_AT:
            guest |= 1 << (_SIGABRT - 1)
        elif signo >= _HOST_RT_FIRST:
            guest |= 1 << (signo - _HOST_RT_FIRST + _GUEST_RT_FIRST - 1)
        elif signo < 32 and signo != _SIGABRT:  # host 6 and 32–34 are qemu's and its libc's own
            guest |= 1 << (signo - 1)
    return guest


def _blocked(task: Path) -> int:
    """A task's blocked set, from its status's SigBlk. Blocking; raises OSError, KeyError, IndexError, ValueError."""
    return int(task_status(task / "status")["SigBlk"].split()[0], 16)


def host_mask(pid: int, tid: int, proc: Path = Path("/proc")) -> int | None:
    """The blocked set of thread `tid` of process `pid` (its status's SigBlk; bit n-1: signal n), None when it
    cannot be read. Blocking."""
    try:
        return _blocked(proc / str(pid) / "task" / str(tid))
    except (OSError, KeyError, IndexError, ValueError):
        return None


def thread_masks(pid: int, proc: Path = Path("/proc")) -> dict[int, int]:
    """Each thread's blocked set (SigBlk) of process `pid`, by its id in the process's own pid namespace (the
    ids the stub names: NSpid's last), read off the host. Blocking."""
    masks: dict[int, int] = {}
    for tid, task in guest_tasks(pid, proc).items():
        try:
            masks[tid] = _blocked(task)
        except (OSError, KeyError, IndexError, ValueError):
            continue  # ended meanwhile
    return masks


def find_site(qemu_pid: int, maps: tuple[GuestMapping, ...], top: int) -> int | None:
    """The address of a `syscall; ret` in the guest's executable memory (below `top`), None if there is none.
    File-backed code first: a library's code does not change under the readout. Blocking."""
    code = sorted((m for m in maps if m.perms[2:3] == "x" and m.end <= top),
                  key=lambda m: not m.path.startswith("/"))
    searched = 0
    with io.FileIO(f"/proc/{qemu_pid}/mem", "r") as mem:
        for m in code:
            length = min(m.end - m.start, SITE_SEARCH_LIMIT - searched)
            if length <= 0:
                break
            try:
                mem.seek(m.start)
                data = mem.read(length)
            except OSError:
                continue
            searched += length
            at = data.find(SYSCALL_RET)
            if at >= 0:
                return m.start + at
    return None


class _Thread:
    """One stopped guest thread made to run syscalls, its own registers kept to be put back."""

    def __init__(self, stub: GdbRemote, pid: int, tid: int, *, layout: dict[str, Register], own: bytes,
                 site: int, orig_rax: bytes | None) -> None:
        self.stub, self.pid, self.tid, self.layout, self.own, self.site = stub, pid, tid, layout, own, site
        self.orig_rax = orig_rax  # not in `g`: the syscall it last entered (guest_plan reads it), put back apart
        rsp = self._value(own, "rsp")
        self.frame = (rsp - RED_ZONE - SCRATCH) & ~0xF
        self.answer = self.frame + 16
        self.held: list[int] = []  # gdb's numbers
        self.redelivered: list[int] = []

    def _value(self, raw: bytes, name: str) -> int:
        reg = self.layout[name]
        return int.from_bytes(raw[reg.offset:reg.offset + reg.size], "little")

    def _with(self, raw: bytearray, **values: int) -> None:
        for name, value in values.items():
            reg = self.layout[name]
            raw[reg.offset:reg.offset + reg.size] = (value & ((1 << 8 * reg.size) - 1)).to_bytes(reg.size, "little")

    async def _step(self, signal: int | None = None) -> None:
        """One step of this thread (the guest's only one). A guest signal that falls due is shown to the stub
        before its delivery: it is held (at the call's registers it must not run its handler; the step after
        drops it) and delivered by put_back."""
        stop = await self.stub.step(self.pid, self.tid, signal)
        if stop.signal != GDB_SIGTRAP:
            self.held.append(stop.signal)

    async def call(self, nr: int, *args: int) -> int:
        """Run syscall `nr` with up to four arguments in this thread; its result (negative: -errno). It is
        stepped only while its registers say the call has not finished: one step too many would run the
        syscall at its return address again."""
        await self.stub.write_memory(self.frame, self.site.to_bytes(8, "little") + bytes(8 + ANSWER))
        raw = bytearray(self.own)
        argv = (*args, 0, 0, 0, 0)[:4]
        self._with(raw, rip=self.site, rsp=self.frame, rax=nr, rdi=argv[0], rsi=argv[1], rdx=argv[2], r10=argv[3])
        await self.stub.write_registers(self.tid, bytes(raw))
        for _ in range(STEPS_PER_CALL):
            await self._step()
            now = await self.stub.registers(self.tid)
            if self._value(now, "rsp") == self.frame + 8:  # past the `ret`: the call is done
                return int.from_bytes(now[self.layout["rax"].offset:self.layout["rax"].offset + 8], "little",
                                      signed=True)
        raise GdbRemoteError(f"thread {self.tid} did not finish syscall {nr} in {STEPS_PER_CALL} steps")

    async def put_back(self) -> None:
        """Its own registers again, then each signal held meanwhile delivered there: a step of its own code,
        which the signal interrupts in its own context."""
        await self.stub.write_registers(self.tid, self.own)
        if self.orig_rax is not None:
            await self.stub.write_register(self.layout["orig_rax"].number, self.orig_rax)
        while self.held:
            if len(self.redelivered) >= STEPS_PER_CALL:
                raise GdbRemoteError(f"signals kept falling due while thread {self.tid} was given them back")
            self.redelivered.append(self.held.pop(0))
            await self._step(self.redelivered[-1])


async def read_signals(stub: GdbRemote, pid: int, tid: int, layout: list[Register], maps: tuple[GuestMapping, ...],
                       *, qemu_pid: int, top: int) -> GuestSignals:
    """Every signal action of the guest and the mask of thread `tid` (the one the stub stopped), asked of the
    guest in that thread. Raises SignalsUnread before anything is done to the thread, GdbRemoteError after
    (the thread is given its registers back first, if the stub still answers)."""
    by_name = {reg.name: reg for reg in layout}
    if not {"rip", "rsp", "rax", "rdi", "rsi", "rdx", "r10"} <= by_name.keys():
        raise SignalsUnread("the stub's registers lack the ones a syscall needs")
    site = await asyncio.to_thread(find_site, qemu_pid, maps, top)
    if site is None:
        raise SignalsUnread("no `syscall; ret` in the guest's code to ask its signal state with")
    if await stub.read_memory(site, len(SYSCALL_RET)) != SYSCALL_RET:
        raise SignalsUnread(f"the guest's code at 0x{site:x} is not what /proc showed")
    own = await stub.registers(tid)
    orig = by_name.get("orig_rax")
    orig_rax = None
    if orig is not None and orig.offset + orig.size > len(own):
        orig_rax = await stub.register(orig.number, orig.size)  # of the thread `registers` selected
    thread = _Thread(stub, pid, tid, layout=by_name, own=own, site=site, orig_rax=orig_rax)
    if not any(m.start <= thread.frame and thread.answer + ANSWER <= m.end and m.perms[1:2] == "w" for m in maps):
        raise SignalsUnread(f"thread {tid}'s stack has no room below its red zone")
    actions: list[SigAction] = []
    try:
        result = await thread.call(NR_RT_SIGPROCMASK, SIG_BLOCK, 0, thread.answer, 8)
        if result < 0:
            raise GdbRemoteError(f"rt_sigprocmask in the guest failed: errno {-result}")
        mask = int.from_bytes(await stub.read_memory(thread.answer, 8), "little")
        for signo in SIGNALS:
            result = await thread.call(NR_RT_SIGACTION, signo, 0, thread.answer, 8)
            if result < 0:
                raise GdbRemoteError(f"rt_sigaction({signo}) in the guest failed: errno {-result}")
            actions.append(SigAction(signo, *struct.unpack("<QQQQ", await stub.read_memory(thread.answer, ANSWER))))
    finally:
        await thread.put_back()
    return GuestSignals(tid, mask, tuple(actions), tuple(thread.redelivered))
