"""The two-ISA program (programs/twoisa/), standing in for a Popcorn binary: its x86_64 and aarch64 builds
share every loadable segment and the address of everything the other ISA must find, and on x86_64 it answers
the Popcorn notify with an aarch64 register set that enters `resume` on its static stack."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from androcond.criu.compat import task_tree
from androcond.popcorn.notify import notify_tasks
from androcond.recoder.arch import AARCH64_REGSET_MAGIC

from .build import build_twoisa
from .conftest import Process, require_tools

SHARED = ("__migrate_gb_variable", "regs_dst", "tls_dst", "state", "resume", "resume_stack")


@pytest.fixture(scope="module", params=[False, True], ids=["regset-in-data", "regset-in-bss"])
def twoisa(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Path]:
    require_tools()
    return build_twoisa(tmp_path_factory.mktemp("twoisa"), regset_in_bss=request.param)


def _layout(path: Path) -> tuple[str, list[tuple[Any, ...]], dict[str, int], int]:
    with path.open("rb") as f:
        elf = ELFFile(f)
        segments = [(s["p_type"], s["p_offset"], s["p_vaddr"], s["p_filesz"], s["p_memsz"], s["p_flags"],
                     s["p_align"]) for s in elf.iter_segments()]
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        symbols = {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name in SHARED}
        note = elf.get_section_by_name(".note.gnu.build-id")
        return str(elf["e_machine"]), segments, symbols, note.data_size if note is not None else -1


def test_both_builds_have_one_layout(twoisa: dict[str, Path]) -> None:
    x86_machine, x86_segments, x86_symbols, x86_note = _layout(twoisa["x86_64"])
    arm_machine, arm_segments, arm_symbols, arm_note = _layout(twoisa["aarch64"])
    assert (x86_machine, arm_machine) == ("EM_X86_64", "EM_AARCH64")
    assert [s[0] for s in x86_segments].count("PT_LOAD") == 3
    assert x86_segments == arm_segments, "the loadable segments differ between the ISAs"
    assert set(x86_symbols) == set(SHARED)
    assert x86_symbols == arm_symbols, "a shared symbol sits at different addresses"
    assert x86_note == arm_note == 36, "the build-id notes differ in size"
    first_exec = min(s[2] for s in x86_segments if s[0] == "PT_LOAD" and s[5] & 1)
    assert x86_symbols["resume"] == first_exec, "resume() opens the first executable page (the parasite's)"
    # Where the register set lies: in the file's bytes (.data), or past them (.bss, anonymous memory).
    in_bss = "bss" in twoisa["x86_64"].name
    for name, size in (("regs_dst", 784), ("tls_dst", 8)):
        at = x86_symbols[name]
        in_file = any(s[2] <= at and at + size <= s[2] + s[3] for s in x86_segments if s[0] == "PT_LOAD")
        assert in_file != in_bss, f"{name} at 0x{at:x}"


def test_the_notify_gets_an_aarch64_register_set_that_enters_resume(
        twoisa: dict[str, Path], processes: list[Process], tmp_path: Path) -> None:
    out = tmp_path / "count.log"
    proc = Process([str(twoisa["x86_64"]), str(out)])
    processes.append(proc)
    proc.wait_for(lambda: out.exists() and b"count 2 " in out.read_bytes(), "two counts")
    (regset,) = notify_tasks(task_tree(proc.pid), "aarch64", timeout=10)
    _, _, symbols, _ = _layout(twoisa["x86_64"])
    with open(f"/proc/{proc.pid}/mem", "rb") as mem:
        mem.seek(symbols["regs_dst"])
        assert mem.read(784) == regset.regs, "the notify's copy is what the runtime left"
        mem.seek(symbols["regs_dst"])
        magic, sp, pc = struct.unpack("<3Q", mem.read(24))
        mem.seek(symbols["__migrate_gb_variable"])
        (variable,) = struct.unpack("<q", mem.read(8))
    assert magic == AARCH64_REGSET_MAGIC
    assert pc == symbols["resume"]
    assert symbols["resume_stack"] < sp <= symbols["resume_stack"] + 32768 and sp % 16 == 0
    assert variable == -1, "the migration point resets the variable"
    counted = out.read_bytes().count(b"\n")
    proc.wait_for(lambda: out.read_bytes().count(b"\n") >= counted + 2, "counting on after the notify")
    assert proc.alive()
