"""The window between the stub's stop and the pause, closed.

qemu's stub stops the guest threads that run guest code. A thread inside a blocking host syscall (read, accept,
a sleep) stays in the kernel, and its syscall may end at any time, also after the stub gave its registers and
before the container's cgroup is frozen. It then writes its result into qemu's copy of the registers and what
it read into guest memory, and waits in qemu until the stub lets the guest go. The memory is read once frozen,
so the registers have to be as new as that.

Seen with qemu 10.0.13: a reader blocked in read(2) on a pipe is stopped with rax = orig_rax = 0 (read's own
number: "in flight"). Once data is written into the pipe, its host thread leaves read(2) for a futex in qemu,
and the stub then says rax = 5.

So each thread's host syscall (`/proc/<qemu>/task/<tid>/syscall`) is read right after the stop, before any
register (guest_state.read_out), and again once the container is frozen. A thread that left the place where it
waited (its user stack pointer and program counter, the line's last two fields) ended its syscall in between:
the container is thawed (the stub still holds every thread that runs guest code), that thread's registers are
read again, and the container is frozen again. Repeated until no thread moved: each round settles at least
one thread for good, so there are at most as many rounds as threads.

The place, not the whole line: the freezer interrupts a blocking syscall, and on arm64 the kernel forgets the
syscall before the task freezes (the line then reads "-1 SP PC", with PC back on the syscall instruction); a
thaw restarts it, a sleep under restart_syscall. The stack pointer stays, and the program counter moves back by
one instruction at most. A thread that ended its syscall waits elsewhere in qemu, on another frame. A thread
seen running at the stop (no place known) is not watched: it is read as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from .gdb_remote import GdbRemote
from .guest_state import GuestState, guest_tasks, read_thread

# How far back a restart moves the program counter: the syscall instruction (aarch64's svc: 4 bytes; x86_64's
# syscall: 2).
REWIND = 4

Step = Callable[[], Awaitable[None]]


def syscall_lines(pid: int, proc: Path = Path("/proc")) -> dict[int, str]:
    """Each thread's `syscall` line of process `pid`, by its id in the container. Blocking."""
    lines: dict[int, str] = {}
    for tid, task in guest_tasks(pid, proc).items():
        try:
            lines[tid] = (task / "syscall").read_text().strip()
        except OSError:
            continue  # ended meanwhile
    return lines


def place(line: str | None) -> tuple[int, int] | None:
    """The user stack pointer and program counter of a `syscall` line; None when the task runs ("running")."""
    fields = (line or "").split()
    if len(fields) < 3:
        return None
    try:
        return int(fields[-2], 16), int(fields[-1], 16)
    except ValueError:
        return None


def moved(at_stop: tuple[int, int], line: str | None) -> bool:
    """Whether a thread that waited at `at_stop` is elsewhere now (a restart of its syscall is not a move)."""
    now = place(line)
    return now is None or now[0] != at_stop[0] or not 0 <= at_stop[1] - now[1] <= REWIND


async def close_window(stub: GdbRemote, state: GuestState, qemu_pid: int, *, freeze: Step, thaw: Step,
                       proc: Path = Path("/proc")) -> GuestState:
    """`state` with the threads whose syscall ended since the stop read again. Called with the container frozen;
    returns with it frozen (raises with it in whichever state the failing step left it: `freeze` and `thaw`
    keep count)."""
    threads = {thread.tid: thread for thread in state.threads}
    # The stopped thread waits in the stub's own read: not a guest syscall.
    pending = {tid: at for tid, line in state.at_stop.items()
               if tid in threads and tid != state.stopped and (at := place(line)) is not None}
    while True:
        now = await asyncio.to_thread(syscall_lines, qemu_pid, proc)
        ended = sorted(tid for tid, at in pending.items() if moved(at, now.get(tid)))
        if not ended:
            return replace(state, threads=tuple(threads[thread.tid] for thread in state.threads))
        await thaw()
        try:
            for tid in ended:
                threads[tid] = replace(await read_thread(stub, tid, state.layout), returned=True)
                del pending[tid]  # it waits in qemu now, until the stub lets the guest go
        finally:
            await freeze()
