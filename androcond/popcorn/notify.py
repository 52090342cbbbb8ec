"""The Popcorn notify protocol, run on every task of a container before a cross-ISA dump.

A Popcorn binary polls the global `__migrate_gb_variable` (-1: stay). We write the target ISA's id there
with ptrace; at its next migration point the runtime rewrites its stack for the target, fills `regs_dst`
and `tls_dst`, sets the variable back to -1 and raises SIGALRM. We wait for that SIGALRM stop, swallow the
signal and detach (CRIU-IMAGES.md section 7). The task then keeps running until it is dumped.

At that stop the notify also reads what the runtime left in `regs_dst` and `tls_dst` (`Regset`): the recode
reads the registers from there, and a lazy dump (the flat freeze) does not write a binary's .bss, where a C
runtime keeps them. The runtime writes them once, at the migration point, so the copy taken at the stop is
what the dump would hold.

ptrace requests for a tracee must all come from the thread that attached, so each task's protocol runs
start to finish in one thread: call `notify_tasks()` in a worker thread, or await `notify()`.
(Webhook notifications live in `daemon/notify.py`; this module is the Popcorn protocol only.)
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import AndrocondError
from .symbols import ElfSymbolsError, read_symbols

MIGRATE_VARIABLE: Final = "__migrate_gb_variable"
REGS_DST: Final = "regs_dst"
TLS_DST: Final = "tls_dst"
TLS_SIZE: Final = 8
# How much of regs_dst is read, whatever its symbol's size: the larger ISA's register set (aarch64's), as the
# recode reads it from a dump.
REGSET_BYTES: Final = 784

TARGET_IDS: Final = {"aarch64": 0, "x86_64": 1}  # what the runtime expects in __migrate_gb_variable
DEFAULT_TIMEOUT: Final = 10.0

PTRACE_PEEKDATA: Final = 2
PTRACE_POKEDATA: Final = 5
PTRACE_CONT: Final = 7
PTRACE_DETACH: Final = 17
PTRACE_SEIZE: Final = 0x4206
PTRACE_INTERRUPT: Final = 0x4207
PTRACE_LISTEN: Final = 0x4208
PTRACE_EVENT_STOP: Final = 128
WALL: Final = 0x40000000  # __WALL: wait for the tracee whatever kind of thread it is
POLL_INTERVAL: Final = 0.002
WORD: Final = 8
GROUP_STOP_SIGNALS: Final = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long


class PopcornError(AndrocondError):
    """The notify failed for a task; names the pid and why."""


class PopcornTimeout(PopcornError):
    """A task did not reach a migration point in time (it was detached with its variable reset)."""


class _TaskExited(PopcornError):
    pass


def ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    result: int = _ptrace(request, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    err = ctypes.get_errno()
    if result == -1 and err:
        raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")
    return result


@dataclass(frozen=True)
class Variable:
    address: int
    size: int  # 4 or 8 bytes: the runtime declares it as an int or a long
    regs: int | None = None  # regs_dst's address, None when the binary lacks it
    tls: int | None = None  # tls_dst's


@dataclass(frozen=True)
class Regset:
    """What the runtime left in regs_dst and tls_dst at the migration point, for the task's `pid` in its own
    pid namespace (as a dump names it)."""

    pid: int
    regs: bytes
    tls: bytes


def find_variable(pid: int, proc: str | Path = "/proc") -> Variable:
    """Address of `__migrate_gb_variable` in the task's executable (a non-PIE Popcorn binary), and of
    `regs_dst` and `tls_dst` when it has them."""
    exe = Path(proc) / str(pid) / "exe"
    try:
        target = os.readlink(exe)
        info = read_symbols(exe, (MIGRATE_VARIABLE, REGS_DST, TLS_DST))
    except (OSError, ElfSymbolsError) as exc:
        raise PopcornError(f"task {pid}: cannot read its executable: {exc}") from exc
    name = Path(target).name
    problems = []
    if info.position_independent:
        problems.append(f"{name} is position-independent (Popcorn binaries are linked at fixed addresses)")
    if MIGRATE_VARIABLE not in info.symbols:
        problems.append(f"{name} lacks {MIGRATE_VARIABLE} (not a Popcorn binary)")
    if problems:
        raise PopcornError(f"task {pid} ({target}): {'; '.join(problems)}")
    address, size = info.symbols[MIGRATE_VARIABLE]
    regs, tls = info.symbols.get(REGS_DST), info.symbols.get(TLS_DST)
    return Variable(address, size if size in (4, 8) else WORD, regs[0] if regs else None, tls[0] if tls else None)


def namespace_pid(pid: int, proc: str | Path = "/proc") -> int:
    """The task's pid in its own (innermost) pid namespace: what CRIU names it in a container's dump."""
    try:
        status = (Path(proc) / str(pid) / "status").read_text()
    except OSError as exc:
        raise PopcornError(f"task {pid}: cannot read its status: {exc.strerror or exc}") from exc
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return pid  # a kernel before 4.1 has no NSpid line: one namespace


def _capture(pid: int, var: Variable, proc: str | Path = "/proc") -> Regset | None:
    """regs_dst and tls_dst as the runtime left them (the tracee is stopped). None when the binary lacks them:
    the recode then names what is missing."""
    if var.regs is None or var.tls is None:
        return None
    fd = os.open(Path(proc) / str(pid) / "mem", os.O_RDONLY)
    try:
        regs = os.pread(fd, REGSET_BYTES, var.regs)
        tls = os.pread(fd, TLS_SIZE, var.tls)
    finally:
        os.close(fd)
    if len(regs) != REGSET_BYTES or len(tls) != TLS_SIZE:
        raise PopcornError(f"task {pid}: regs_dst/tls_dst could not be read whole from its memory")
    return Regset(namespace_pid(pid, proc), regs, tls)


def _read(pid: int, var: Variable) -> int:
    word = ptrace(PTRACE_PEEKDATA, pid, var.address) & 0xFFFFFFFFFFFFFFFF
    raw = word.to_bytes(WORD, "little")[: var.size]
    return int.from_bytes(raw, "little", signed=True)


def _write(pid: int, var: Variable, value: int) -> None:
    # POKEDATA writes a whole word: keep the bytes past a 4-byte variable as they are.
    word = (ptrace(PTRACE_PEEKDATA, pid, var.address) & 0xFFFFFFFFFFFFFFFF).to_bytes(WORD, "little")
    new = value.to_bytes(var.size, "little", signed=True) + word[var.size :]
    ptrace(PTRACE_POKEDATA, pid, var.address, int.from_bytes(new, "little"))


@dataclass(frozen=True)
class _Stop:
    signo: int
    event: int  # PTRACE_EVENT_STOP for interrupt and group stops, 0 for a signal-delivery stop


def _wait_stop(pid: int, deadline: float) -> _Stop | None:
    """The tracee's next stop, None at the deadline. Raises if the task ends."""
    while True:
        try:
            waited, status = os.waitpid(pid, WALL | os.WNOHANG)
        except ChildProcessError as exc:
            raise _TaskExited(f"task {pid} is gone") from exc
        if waited == pid:
            if os.WIFSTOPPED(status):
                return _Stop(os.WSTOPSIG(status), status >> 16)
            raise _TaskExited(f"task {pid} ended during the notify (status {status:#x})")
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_INTERVAL)  # waitpid has no timeout; ptrace stops give no fd to wait on


def _resume(pid: int, stop: _Stop) -> None:
    """Let the tracee run on, delivering the signal it stopped for (unless it was our interrupt)."""
    if stop.event == PTRACE_EVENT_STOP:
        if stop.signo in GROUP_STOP_SIGNALS:
            ptrace(PTRACE_LISTEN, pid)  # a job-control stop stays a stop, as without us
        else:
            ptrace(PTRACE_CONT, pid)
    else:
        ptrace(PTRACE_CONT, pid, 0, stop.signo)


def notify_task(pid: int, target: str, timeout: float = DEFAULT_TIMEOUT,
                var: Variable | None = None) -> Regset | None:
    """Run the protocol on one task (blocking): what it left in regs_dst/tls_dst (None when its binary lacks
    them). Raises PopcornTimeout or PopcornError."""
    if target not in TARGET_IDS:
        raise PopcornError(f"unknown target ISA {target!r}")
    variable = var or find_variable(pid)
    deadline = time.monotonic() + timeout
    try:
        ptrace(PTRACE_SEIZE, pid)
        ptrace(PTRACE_INTERRUPT, pid)
    except OSError as exc:
        raise PopcornError(f"task {pid}: cannot attach: {exc.strerror}") from exc
    try:
        stop = _wait_stop(pid, deadline)
        if stop is None:
            _detach_quietly(pid)
            raise PopcornTimeout(f"task {pid} did not stop for the tracer within {timeout:g}s")
        _write(pid, variable, TARGET_IDS[target])
        _resume(pid, stop)
        while True:
            stop = _wait_stop(pid, deadline)
            if stop is None:
                _give_up(pid, variable)
                raise PopcornTimeout(
                    f"task {pid} did not reach a migration point within {timeout:g}s (its variable was reset)"
                )
            if stop.event == 0 and stop.signo == signal.SIGALRM and _read(pid, variable) == -1:
                try:
                    return _capture(pid, variable)
                finally:
                    ptrace(PTRACE_DETACH, pid, 0, 0)  # the SIGALRM was for us: the task must not see it
            _resume(pid, stop)
    except OSError as exc:
        _detach_quietly(pid)
        raise PopcornError(f"task {pid}: ptrace failed: {exc}") from exc


def _give_up(pid: int, var: Variable) -> None:
    """Stop the tracee, put -1 back so it never migrates later on its own, and detach."""
    try:
        ptrace(PTRACE_INTERRUPT, pid)
        while (stop := _wait_stop(pid, time.monotonic() + 5)) is not None:
            if stop.event == PTRACE_EVENT_STOP:
                break
            ptrace(PTRACE_CONT, pid, 0, stop.signo)  # deliver what it was due, then catch our interrupt
        _write(pid, var, -1)
        ptrace(PTRACE_DETACH, pid, 0, 0)
    except (OSError, PopcornError):
        _detach_quietly(pid)


def _detach_quietly(pid: int) -> None:
    try:
        ptrace(PTRACE_DETACH, pid, 0, 0)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def notify_tasks(pids: Iterable[int], target: str, timeout: float = DEFAULT_TIMEOUT) -> list[Regset]:
    """Notify every task in turn (blocking): the register sets they left. Every executable is checked first, so
    a container with one non-Popcorn process is refused before any task is touched."""
    tasks = list(pids)
    variables = {pid: find_variable(pid) for pid in tasks}
    return [regset for pid in tasks if (regset := notify_task(pid, target, timeout, variables[pid])) is not None]


async def notify(pids: Iterable[int], target: str, task_timeout: float = DEFAULT_TIMEOUT) -> list[Regset]:
    """notify_tasks() in a worker thread (one thread per call, as ptrace requires). The time limit is per
    task and enforced in the thread: a thread blocked in ptrace cannot be cancelled from the loop."""
    return await asyncio.to_thread(notify_tasks, list(pids), target, task_timeout)
