"""The window between the stub's stop and the pause (agent/guest_window.py), against a stand-in for the stub and
for qemu's tasks in /proc: which threads are read again, when the container is thawed and frozen again, and which
count as returned. (The real thing — qemu 10's stub, a reader whose read(2) ends in the window — is on the arm64
bed: tests/agent/test_emulated_window.py.)"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from androcond.agent.gdb_remote import GdbRemote
from androcond.agent.guest_plan import write_plan
from androcond.agent.guest_state import GuestMapping, GuestState, GuestThread, Register
from androcond.agent.guest_window import close_window, syscall_lines
from androcond.protocol import restorer_plan as rp
from androcond.protocol.emulation import PLAN

from .test_guest_plan import PAGE, memory, records, thread

__all__ = ["memory"]  # the fixture, shared with the plan's tests

QEMU = 900  # qemu's pid in the stand-in /proc
STOPPED, READER, SLEEPER = 10, 11, 12
LAYOUT = (Register("rax", 0, 8, 0), Register("orig_rax", 8, 8, 57))
READ_LINE = "0 0x0 0x7f00 0x3f 0x8 0x0 0x0 0x7ff0 0x4000"
SLEEP_LINE = "230 0x0 0x0 0x7e00 0x0 0x0 0x0 0x7ef0 0x4000"
PARKED_LINE = "202 0x5500 0x189 0x0 0x0 0x0 0xffffffff 0x7ff8 0x4100"  # a futex of qemu's own


class Tasks:
    """qemu's tasks in a stand-in /proc: each with NSpid (host id first, the container's last) and a syscall line."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def set(self, tid: int, line: str) -> None:
        task = self.root / str(QEMU) / "task" / str(tid + 5000)
        task.mkdir(parents=True, exist_ok=True)
        (task / "status").write_text(f"Name:\tqemu\nNSpid:\t{tid + 5000}\t{tid}\n")
        (task / "syscall").write_text(line + "\n")


class Stub:
    """Each thread's `g` registers (rax, then orig_rax), as qemu would give them now."""

    def __init__(self) -> None:
        self.regs: dict[int, tuple[int, int]] = {}
        self.asked: list[int] = []

    async def registers(self, tid: int) -> bytes:
        self.asked.append(tid)
        rax, orig = self.regs[tid]
        return rax.to_bytes(8, "little") + orig.to_bytes(8, "little")

    async def register(self, number: int, size: int) -> bytes:
        raise AssertionError("every register is in `g` here")


Bed = tuple[Tasks, Stub, GuestState, list[str]]


def stopped_guest(tasks: Tasks, stub: Stub) -> GuestState:
    """The guest as read out at the stop: its threads' registers from `stub`, their syscalls from `tasks`."""
    threads = tuple(GuestThread(tid, {"rax": rax.to_bytes(8, "little"), "orig_rax": orig.to_bytes(8, "little")})
                    for tid, (rax, orig) in stub.regs.items())
    return GuestState(STOPPED, "/bin/prog", threads, (), "/", stopped=STOPPED, layout=LAYOUT,
                      at_stop=syscall_lines(QEMU, tasks.root))


@pytest.fixture
def bed(tmp_path: Path) -> Bed:
    """A guest stopped with its main thread in the stub's read, a reader in read(2) (rax = orig_rax = 0) and a
    sleeper in clock_nanosleep; `steps` records the freezer's thaws and freezes."""
    tasks, stub = Tasks(tmp_path), Stub()
    tasks.set(STOPPED, "0 0x4 0x7a00 0x100 0x0 0x0 0x0 0x7a10 0x4200")
    tasks.set(READER, READ_LINE)
    tasks.set(SLEEPER, SLEEP_LINE)
    stub.regs = {STOPPED: (2**64 - 4, 230), READER: (0, 0), SLEEPER: (230, 230)}
    return tasks, stub, stopped_guest(tasks, stub), []


async def close(bed: Bed, *, on_thaw: Callable[[], None] | None = None) -> GuestState:
    tasks, stub, state, steps = bed

    async def freeze() -> None:
        steps.append("freeze")

    async def thaw() -> None:
        steps.append("thaw")
        if on_thaw is not None:
            on_thaw()

    return await close_window(cast(GdbRemote, stub), state, QEMU, freeze=freeze, thaw=thaw, proc=tasks.root)


def by_tid(state: GuestState) -> dict[int, tuple[int, int, bool]]:
    return {t.tid: (t.value("rax"), t.value("orig_rax"), t.returned) for t in state.threads}


def test_the_host_syscalls_are_read_by_the_ids_the_stub_names(bed: Bed) -> None:
    assert bed[2].at_stop == {STOPPED: "0 0x4 0x7a00 0x100 0x0 0x0 0x0 0x7a10 0x4200", READER: READ_LINE,
                              SLEEPER: SLEEP_LINE}


async def test_nothing_ended_nothing_is_thawed(bed: Bed) -> None:
    tasks, stub, state, steps = bed
    tasks.set(STOPPED, "7 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0")  # the stub's own thread: never a guest syscall
    after = await close(bed)
    assert steps == [] and stub.asked == []
    assert after.threads == state.threads


async def test_a_syscall_that_ended_in_the_window_is_read_again_as_returned(
        bed: Bed) -> None:
    tasks, stub, _, steps = bed
    tasks.set(READER, PARKED_LINE)  # read(2) got 5 bytes and the thread waits in qemu
    stub.regs[READER] = (5, 0)
    after = await close(bed)
    assert steps == ["thaw", "freeze"]
    assert stub.asked == [READER]
    assert by_tid(after) == {STOPPED: (2**64 - 4, 230, False), READER: (5, 0, True), SLEEPER: (230, 230, False)}


async def test_a_syscall_that_returned_its_own_number_in_the_window_is_returned(
        bed: Bed) -> None:
    tasks, _, _, _ = bed
    tasks.set(READER, PARKED_LINE)  # read(2) returned 0 (end of file): rax is 0 as before, but it did return
    after = await close(bed)
    assert by_tid(after)[READER] == (0, 0, True)


async def test_a_syscall_the_freezer_interrupted_has_not_moved(bed: Bed) -> None:
    tasks, stub, _, steps = bed
    # arm64 forgets an interrupted syscall before the task freezes: "-1 SP PC", PC back on the svc.
    tasks.set(READER, "-1 0x7ff0 0x3ffc")
    tasks.set(SLEEPER, "-1 0x7ef0 0x3ffc")
    after = await close(bed)
    assert steps == [] and stub.asked == []
    assert not any(thread.returned for thread in after.threads)


async def test_a_sleep_the_thaw_restarted_stays_in_flight(bed: Bed) -> None:
    tasks, stub, _, steps = bed
    tasks.set(READER, PARKED_LINE)
    stub.regs[READER] = (5, 0)
    # Thawed to read the reader again, the freezer's interrupted sleep comes back as restart_syscall, from the
    # same instruction on the same stack.
    after = await close(bed, on_thaw=lambda: tasks.set(SLEEPER, "219 0x0 0x0 0x7e00 0x0 0x0 0x0 0x7ef0 0x4000"))
    assert steps == ["thaw", "freeze"]
    assert stub.asked == [READER]
    assert by_tid(after) == {STOPPED: (2**64 - 4, 230, False), READER: (5, 0, True), SLEEPER: (230, 230, False)}


async def test_a_sleep_that_ended_after_a_thaw_is_returned(bed: Bed) -> None:
    tasks, stub, _, _ = bed
    tasks.set(READER, PARKED_LINE)
    stub.regs[READER] = (5, 0)

    def sleep_ends() -> None:
        tasks.set(SLEEPER, PARKED_LINE)
        stub.regs[SLEEPER] = (0, 230)

    after = await close(bed, on_thaw=sleep_ends)
    assert by_tid(after)[SLEEPER] == (0, 230, True)


async def test_a_thread_seen_running_at_the_stop_is_not_watched(tmp_path: Path) -> None:
    tasks, stub, steps = Tasks(tmp_path), Stub(), list[str]()
    tasks.set(STOPPED, "0 0x4 0x7a00 0x100 0x0 0x0 0x0 0x7a10 0x4200")
    tasks.set(READER, "running")  # on its way into its syscall, or into qemu's wait: no place to compare
    stub.regs = {STOPPED: (2**64 - 4, 230), READER: (0, 0)}
    state = stopped_guest(tasks, stub)
    tasks.set(READER, PARKED_LINE)
    after = await close((tasks, stub, state, steps))
    assert steps == [] and not any(t.returned for t in after.threads), "read as before: by its registers alone"


def test_a_returned_thread_is_not_run_again_at_home(tmp_path: Path, memory: tuple[mmap.mmap, int]) -> None:
    area, base = memory
    area[PAGE:PAGE + 2] = b"\x0f\x05"  # a syscall instruction, and both threads stopped right after it
    maps = (GuestMapping(base, base + PAGE, "rw-p", 0, ""), GuestMapping(base + PAGE, base + 2 * PAGE, "r-xp", 0, ""))
    in_flight = thread(READER, rip=base + PAGE + 2, rax=0, orig_rax=0, rsp=base + 64)
    ended = replace(thread(SLEEPER, rip=base + PAGE + 2, rax=0, orig_rax=0, rsp=base + 128), returned=True)
    summary = write_plan(GuestState(READER, "", (in_flight, ended), maps, "/"), os.getpid(), tmp_path, mount="/m")
    first, second = (payload for kind, payload in records((tmp_path / PLAN).read_bytes()) if kind == rp.R_THREAD)
    rip = rp.GP_ORDER.index("rip")
    assert struct.unpack_from("<18Q", first, 64)[rip] == base + PAGE, "rax = orig_rax after a syscall: run again"
    assert struct.unpack_from("<18Q", second, 64)[rip] == base + PAGE + 2, "its read ended (EOF): not run again"
    assert any(f"thread {SLEEPER}: its syscall ended after the stop" in note for note in summary.notes)
