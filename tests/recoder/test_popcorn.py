"""The Popcorn notify protocol against live processes (real ptrace), and the preflight that refuses a
container whose processes cannot move to another ISA."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from androcond.criu.compat import task_tree
from androcond.popcorn.notify import (
    PopcornError,
    PopcornTimeout,
    find_variable,
    namespace_pid,
    notify,
    notify_tasks,
)
from androcond.popcorn.symbols import ElfSymbolsError, read_symbols
from androcond.recoder import RecodeRefused, check_executable, preflight_processes, read_elf
from androcond.recoder.elf import POPCORN_SYMBOLS

from .build import build_twoisa
from .conftest import STANDIN, Builds, Process, require_tools

AARCH64_MAGIC = 0xAABCBDEADBEAF


def peek(pid: int, addr: int, size: int = 8) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(addr)
        return mem.read(size)


def variable(pid: int) -> int:
    value: int = struct.unpack("<q", peek(pid, find_variable(pid).address))[0]
    return value


def tracer(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("TracerPid:")))


def standin(root: Path, tmp: Path, processes: list[Process]) -> Process:
    ready = tmp / f"ready-{len(processes)}"
    proc = Process([str(root / "bin" / STANDIN), str(ready)], ready=ready)
    processes.append(proc)
    return proc


async def test_notify_runs_the_migration_point_and_the_task_goes_on(builds: Builds, tmp_path: Path,
                                                                    processes: list[Process]) -> None:
    root = builds.root(tmp_path / "root")
    proc = standin(root, tmp_path, processes)
    symbols = read_elf(root / "bin" / STANDIN).symbols
    regs, tls = symbols["regs_dst"].address, symbols["tls_dst"].address
    assert peek(proc.pid, regs) == bytes(8)

    (regset,) = await notify(task_tree(proc.pid), "aarch64", task_timeout=10)

    assert int.from_bytes(peek(proc.pid, regs), "little") == AARCH64_MAGIC
    # What the runtime left in regs_dst/tls_dst (the stand-in's .bss, which a lazy dump would not write), read at
    # the migration point, for the task as a dump would name it.
    assert regset.pid == namespace_pid(proc.pid)
    assert len(regset.regs) == 784
    assert regset.regs == peek(proc.pid, regs, 784) and regset.tls == peek(proc.pid, tls)
    assert variable(proc.pid) == -1
    assert tracer(proc.pid) == 0, "detached"
    # The SIGALRM was swallowed and the program keeps running: its tick counter still moves.
    ticks = read_elf(root / "bin" / STANDIN, ("ticks",)).symbols["ticks"].address
    first = peek(proc.pid, ticks)
    proc.wait_for(lambda: peek(proc.pid, ticks) != first, "ticks after the notify")
    assert proc.alive()


def test_a_task_that_never_reaches_a_migration_point_times_out(builds: Builds, tmp_path: Path,
                                                               processes: list[Process]) -> None:
    proc = Process([str(builds.never), str(tmp_path / "ready")], ready=tmp_path / "ready")
    processes.append(proc)
    started = time.monotonic()
    with pytest.raises(PopcornTimeout, match=rf"task {proc.pid} did not reach a migration point within 0.5s"):
        notify_tasks([proc.pid], "aarch64", timeout=0.5)
    assert time.monotonic() - started < 5
    assert proc.alive() and tracer(proc.pid) == 0
    assert variable(proc.pid) == -1, "the target id must not stay behind to trigger a migration later"


def test_a_non_popcorn_task_is_refused_before_any_task_is_touched(builds: Builds, tmp_path: Path,
                                                                  processes: list[Process]) -> None:
    root = builds.root(tmp_path / "root")
    good = standin(root, tmp_path, processes)
    plain = Process([str(builds.ticker), str(tmp_path / "ticks")])
    processes.append(plain)
    regs = read_elf(root / "bin" / STANDIN).symbols["regs_dst"].address
    with pytest.raises(PopcornError, match=rf"task {plain.pid} \(.*/ticker\): ticker lacks __migrate_gb_variable"):
        notify_tasks([good.pid, plain.pid], "aarch64", timeout=5)
    assert peek(good.pid, regs) == bytes(8) and variable(good.pid) == -1


def test_task_tree_lists_parent_and_children(builds: Builds, tmp_path: Path, processes: list[Process]) -> None:
    proc = Process([str(builds.family), str(tmp_path)])
    processes.append(proc)
    proc.wait_for(lambda: (tmp_path / "state").exists() and bool(_children(proc.pid)), "the child process")
    tree = task_tree(proc.pid)
    assert tree[0] == proc.pid and tree[1:] == _children(proc.pid) and len(tree) == 2


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_preflight_accepts_a_popcorn_layout_and_names_what_is_missing(builds: Builds, tmp_path: Path) -> None:
    root = builds.root(tmp_path / "root")
    name = f"/bin/{STANDIN}"
    assert check_executable(root, name, "x86_64", "aarch64") == []
    assert check_executable(tmp_path, "/nowhere", "x86_64", "x86_64") == [], "same ISA needs nothing"
    os.unlink(root / "bin" / f"{STANDIN}_aarch64")
    (problem,) = check_executable(root, name, "x86_64", "aarch64")
    assert problem.reason == f"{STANDIN}_aarch64 missing beside it"
    (root / "bin" / f"{STANDIN}_aarch64").write_bytes(builds.x86_64.read_bytes())
    (problem,) = check_executable(root, name, "x86_64", "aarch64")
    assert problem.reason == f"{STANDIN}_aarch64 is an x86_64 binary, not aarch64"


def test_preflight_of_live_processes(builds: Builds, tmp_path: Path, processes: list[Process]) -> None:
    root = builds.root(tmp_path / "root")
    good = standin(root, tmp_path, processes)
    plain = Process([str(builds.ticker), str(tmp_path / "ticks")])
    processes.append(plain)
    preflight_processes([good.pid], "x86_64", "aarch64")
    preflight_processes([good.pid, plain.pid], "x86_64", "x86_64")
    with pytest.raises(RecodeRefused) as refused:
        preflight_processes([good.pid, plain.pid], "x86_64", "aarch64")
    assert {p.pid for p in refused.value.problems} == {plain.pid}
    assert "ticker_x86-64 missing beside it" in str(refused.value)
    assert "ticker lacks __migrate_gb_variable" in str(refused.value)


def test_the_agent_s_symbol_reader_agrees_with_pyelftools(tmp_path: Path) -> None:
    """The device's agent reads `__migrate_gb_variable` without pyelftools: the same answer, both ISAs."""
    require_tools()
    for binary in build_twoisa(tmp_path).values():
        light = read_symbols(binary, POPCORN_SYMBOLS)
        full = read_elf(binary, POPCORN_SYMBOLS)
        assert light.isa == full.isa and light.position_independent == full.position_independent
        assert light.symbols == {name: (s.address, s.size) for name, s in full.symbols.items()}
        assert set(light.symbols) == set(POPCORN_SYMBOLS)
    plain = tmp_path / "plain.txt"
    plain.write_text("not an executable\n")
    with pytest.raises(ElfSymbolsError, match="not an ELF file"):
        read_symbols(plain, POPCORN_SYMBOLS)
