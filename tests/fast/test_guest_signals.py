"""An emulated process's signal state on the way home (agent/guest_signals.py): the host mask qemu keeps for
each guest thread mapped back to the guest's numbers; the injected calls' bookkeeping against a stand-in for
qemu's stub (its registers put back byte for byte, a signal that fell due re-delivered); and the plan that
carries both. The calls themselves run against a real qemu-x86_64 on the arm64 bed
(tests/agent/test_emulated_way_home.py)."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import struct
import threading
from pathlib import Path

import pytest

from androcond.agent.gdb_remote import StopReply
from androcond.agent.guest_plan import write_plan
from androcond.agent.guest_signals import (
    GDB_SIGTRAP,
    NR_RT_SIGACTION,
    NR_RT_SIGPROCMASK,
    SIGNALS,
    SYSCALL_RET,
    guest_mask,
    host_mask,
    read_signals,
    thread_masks,
)
from androcond.agent.guest_state import (
    GuestMapping,
    GuestSignals,
    GuestState,
    Register,
    SigAction,
    SignalsUnread,
)
from androcond.protocol import restorer_plan as rp
from androcond.protocol.emulation import PLAN

from .test_guest_plan import memory, records, thread

PAGE = mmap.PAGESIZE
__all__ = ["memory"]  # the fixture, shared with the plan's tests


def bit(signo: int) -> int:
    return 1 << (signo - 1)


def test_host_masks_map_back_to_the_guests_numbers() -> None:
    """As qemu 10 maps them (seen with 10.0.13): 1–31 as they are but SIGABRT, which is the host's 35; the
    guest's 32–60 are the host's 36–64; the host's 6 and 32–34 are qemu's and its libc's own."""
    assert guest_mask(bit(1) | bit(10) | bit(12) | bit(31)) == bit(1) | bit(10) | bit(12) | bit(31)
    assert guest_mask(bit(35)) == bit(6)
    assert guest_mask(bit(36) | bit(40) | bit(64)) == bit(32) | bit(36) | bit(60)
    assert guest_mask(bit(6) | bit(32) | bit(33) | bit(34)) == 0


def test_a_thread_s_mask_is_read_off_the_host() -> None:
    tid = threading.get_native_id()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, 40})
    try:
        blocked = host_mask(os.getpid(), tid)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert blocked is not None and blocked & (bit(12) | bit(40)) == bit(12) | bit(40)
    assert guest_mask(blocked) & (bit(12) | bit(36)) == bit(12) | bit(36)
    assert host_mask(os.getpid(), 1 << 30) is None  # no such thread


def test_thread_masks_go_by_the_ids_the_stub_names(tmp_path: Path) -> None:
    """The stub names a container's threads as its pid namespace does (NSpid's last), not as the host does."""
    for host, inner, blocked in ((4100, 7, "0000000000000800"), (4105, 11, "0000000000000a00")):
        task = tmp_path / "4100" / "task" / str(host)
        task.mkdir(parents=True)
        (task / "status").write_text(f"Name:\tqemu\nNSpid:\t{host}\t{inner}\nSigBlk:\t{blocked}\n")
    assert thread_masks(4100, tmp_path) == {7: bit(12), 11: bit(10) | bit(12)}
    assert thread_masks(4200, tmp_path) == {}


@pytest.fixture
def code(memory: tuple[mmap.mmap, int]) -> int:
    """A page of this process holding a `syscall; ret`, standing for the guest's code."""
    area, address = memory
    area[100:100 + len(SYSCALL_RET)] = SYSCALL_RET
    return address


LAYOUT = [Register(name, 8 * i, 8, i) for i, name in enumerate(("rax", "rdi", "rsi", "rdx", "r10", "rsp", "rip"))]
ORIG_RAX = Register("orig_rax", 8 * len(LAYOUT), 8, len(LAYOUT))  # not in `g`, as with qemu


class StubStandIn:
    """What read_signals asks of qemu's stub, modelled: one thread's registers and memory; a step at the
    `syscall; ret` runs both, as qemu's step does, elsewhere one instruction of its own code; `signals`: the
    steps (by number) at which a guest signal falls due instead, in a thread (gdb's signal, thread). A resume
    that names a signal gives it to the thread the stub holds, as qemu's does."""

    def __init__(self, site: int, rsp: int, actions: dict[int, tuple[int, int, int, int]], mask: int,
                 signals: dict[int, tuple[int, int]]) -> None:
        self.site, self.actions, self.mask, self.signals = site, actions, mask, signals
        self.regs = {reg.name: 0x1000 + reg.number for reg in LAYOUT} | {"rsp": rsp, "rip": 0x5000}
        self.orig_rax = 230
        self.memory: dict[int, int] = {}
        self.steps = 0
        self.holding = TID  # the thread whose stop the stub reported last
        self.delivered: list[tuple[int, int, dict[str, int]]] = []  # (thread, signal, our registers then)

    def raw(self) -> bytes:
        return b"".join(self.regs[reg.name].to_bytes(8, "little") for reg in LAYOUT)

    async def registers(self, tid: int) -> bytes:
        return self.raw()

    async def register(self, number: int, size: int) -> bytes:
        assert number == ORIG_RAX.number
        return self.orig_rax.to_bytes(8, "little")

    async def write_registers(self, tid: int, raw: bytes) -> None:
        for reg in LAYOUT:
            self.regs[reg.name] = int.from_bytes(raw[reg.offset:reg.offset + 8], "little")

    async def write_register(self, number: int, value: bytes) -> None:
        assert number == ORIG_RAX.number
        self.orig_rax = int.from_bytes(value, "little")

    async def read_memory(self, address: int, length: int) -> bytes:
        if address == self.site:
            return ctypes.string_at(address, length)
        return bytes(self.memory.get(address + i, 0) for i in range(length))

    async def write_memory(self, address: int, data: bytes) -> None:
        self.memory.update({address + i: b for i, b in enumerate(data)})

    async def step(self, pid: int, tid: int, signal: int | None = None) -> StopReply:
        assert tid == TID
        if signal is not None:
            self.delivered.append((self.holding, signal, dict(self.regs)))
        self.steps += 1
        if self.steps in self.signals:  # shown before delivery: nothing ran
            signo, self.holding = self.signals[self.steps]
            return StopReply(signo, self.holding)
        self.holding = tid
        if self.regs["rip"] != self.site:
            self.regs["rip"] += 1
            return StopReply(GDB_SIGTRAP, tid)
        nr, buf = self.regs["rax"], self.regs["rdx"]
        if nr == NR_RT_SIGPROCMASK:
            answer = self.mask.to_bytes(8, "little")
        else:
            assert nr == NR_RT_SIGACTION
            answer = struct.pack("<QQQQ", *self.actions.get(self.regs["rdi"], (0, 0, 0, 0)))
        await self.write_memory(buf, answer)
        self.regs["rax"] = 0
        self.orig_rax = nr
        back = int.from_bytes(await self.read_memory(self.regs["rsp"], 8), "little")
        self.regs["rip"], self.regs["rsp"] = back, self.regs["rsp"] + 8
        return StopReply(GDB_SIGTRAP, tid)


def maps_for(code: int, stack: int) -> tuple[GuestMapping, ...]:
    return (GuestMapping(code, code + PAGE, "r-xp", 0, "/lib/libc.so.6"),
            GuestMapping(stack - 4 * PAGE, stack + PAGE, "rw-p", 0, "[stack]"))


STACK = 0x7FF000000000
TID = 77
USR1 = 30  # gdb's number


async def ask(stub: StubStandIn, code: int) -> GuestSignals:
    return await read_signals(stub, TID, TID, [*LAYOUT, ORIG_RAX], maps_for(code, STACK),  # type: ignore[arg-type]
                              qemu_pid=os.getpid(), top=1 << 47)


async def test_the_guest_is_asked_and_given_its_registers_back(code: int) -> None:
    actions = {10: (0x401000, 0x14000000, 0x7F0000001000, bit(15)), 13: (1, 0, 0, 0)}
    stub = StubStandIn(code + 100, STACK, actions, bit(12), signals={})
    own, orig = stub.raw(), stub.orig_rax
    said = await ask(stub, code)
    assert said.mask == bit(12)
    assert [a.signo for a in said.actions] == list(SIGNALS)
    assert {a.signo: (a.handler, a.flags, a.restorer, a.mask) for a in said.actions if not a.default()} == actions
    # Its own registers again, and the syscall it was in.
    assert stub.raw() == own and stub.orig_rax == orig
    assert said.redelivered == () and stub.delivered == []


async def test_a_signal_that_fell_due_in_the_asked_thread_is_delivered_at_its_own_registers(code: int) -> None:
    stub = StubStandIn(code + 100, STACK, {}, 0, signals={3: (USR1, TID)})
    own = dict(stub.regs)
    said = await ask(stub, code)
    assert said.redelivered == (USR1,)
    assert stub.delivered == [(TID, USR1, own)], "not delivered, or at the call's registers"


async def test_no_syscall_site_leaves_the_guest_untouched(code: int) -> None:
    ctypes.memset(code + 100, 0x90, len(SYSCALL_RET))  # no `syscall; ret` left
    stub = StubStandIn(code + 100, STACK, {}, 0, signals={})
    own = stub.raw()
    with pytest.raises(SignalsUnread, match="syscall; ret"):
        await ask(stub, code)
    assert stub.raw() == own and stub.steps == 0 and not stub.memory


def thread_masks_in(plan: bytes) -> dict[int, int]:
    """The signal mask of each THREAD record, by its tid."""
    return {struct.unpack_from("<I", body)[0]: struct.unpack_from("<Q", body, 16)[0]
            for kind, body in records(plan) if kind == rp.R_THREAD}


def test_the_plan_carries_the_actions_and_each_thread_s_mask(tmp_path: Path,
                                                             memory: tuple[mmap.mmap, int]) -> None:
    _area, base = memory
    asked, other = 4321, threading.get_native_id()  # the other thread's mask is read off this one
    maps = (GuestMapping(base, base + PAGE, "rw-p", 0, ""),)
    threads = (thread(asked, rip=base, rsp=base + 64), thread(other, rip=base, rsp=base + 128))
    handler = SigAction(10, 0x401000, 0x14000000, 0x7F0000001000, bit(15))
    signals = GuestSignals(asked, bit(12), (SigAction(1, 0, 0, 0, 0), handler, SigAction(13, 1, 0, 0, 0)), ())
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, 40})
    try:
        summary = write_plan(GuestState(asked, "", threads, maps, "/", signals), os.getpid(), tmp_path,
                             mount="/m")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    plan = (tmp_path / PLAN).read_bytes()
    carried = [struct.unpack_from("<IIQQQQ", body) for kind, body in records(plan) if kind == rp.R_SIGACTION]
    assert carried == [(10, 0, 0x401000, 0x14000000, 0x7F0000001000, bit(15)), (13, 0, 1, 0, 0, 0)]
    masks = thread_masks_in(plan)
    assert masks[asked] == bit(12)
    assert masks[other] & (bit(10) | bit(36)) == bit(10) | bit(36)  # host 40 is the guest's 36
    assert not any("signal" in note for note in summary.notes)


def test_the_stopped_thread_s_mask_is_the_one_it_had_before_the_stop(tmp_path: Path,
                                                                     memory: tuple[mmap.mmap, int]) -> None:
    """Not asked (more than one thread): the stopped thread's mask from before the stop (its host mask is all
    blocked while the stub holds it), the others' as the host shows them now."""
    _area, base = memory
    stopped, other = 4321, threading.get_native_id()
    state = GuestState(stopped, "", (thread(stopped, rip=base, rsp=base + 64), thread(other, rip=base, rsp=base)),
                       (GuestMapping(base, base + PAGE, "rw-p", 0, ""),), "/", None, "it has 2 threads", stopped)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        summary = write_plan(state, os.getpid(), tmp_path, mount="/m", masks_before={stopped: bit(12) | bit(35)})
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    masks = thread_masks_in((tmp_path / PLAN).read_bytes())
    assert masks[stopped] == bit(12) | bit(6)  # the host's 35 is the guest's SIGABRT
    assert masks[other] & bit(10)
    assert any("signal actions are not carried: it has 2 threads" in note for note in summary.notes)


def test_a_plan_without_the_signal_state_says_why(tmp_path: Path, memory: tuple[mmap.mmap, int]) -> None:
    _area, base = memory
    state = GuestState(4321, "", (thread(4321, rip=base, rsp=base + 64),), (GuestMapping(base, base + PAGE,
                       "rw-p", 0, ""),), "/", None, "no `syscall; ret` in the guest's code")
    summary = write_plan(state, os.getpid(), tmp_path, mount="/m")
    assert any("signal actions are not carried: no `syscall; ret`" in note for note in summary.notes)
    assert not any(kind == rp.R_SIGACTION for kind, _ in records((tmp_path / PLAN).read_bytes()))
