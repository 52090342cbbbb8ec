"""The agent's emulator: a static qemu-x86_64 for its own ISA (ELF files built here), its version, and a
binfmt_misc entry that works inside containers."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

from androcond.agent.emulator import (
    EM_AARCH64,
    EM_X86_64,
    NO_EMULATOR,
    binfmt_runs_x86_64,
    emulator_candidate,
    emulator_version,
    find_emulator,
    static_elf_machine,
)

PT_LOAD, PT_INTERP = 1, 3


def elf(path: Path, machine: int = EM_AARCH64, segments: tuple[int, ...] = (PT_LOAD,), e_type: int = 2,
        klass: int = 2) -> Path:
    """A 64-bit little-endian ELF header with these program headers (nothing runnable)."""
    header = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", klass, 1, 1, 0, e_type, machine, 1, 0x400000,
                         64, 0, 0, 64, 56, len(segments), 64, 0, 0)
    table = b"".join(struct.pack("<IIQQQQQQ", kind, 5, 0, 0, 0, 0, 0, 0x1000) for kind in segments)
    path.write_bytes(header + table)
    path.chmod(0o755)
    return path


def test_static_elf_machine(tmp_path: Path) -> None:
    assert static_elf_machine(elf(tmp_path / "static")) == EM_AARCH64
    assert static_elf_machine(elf(tmp_path / "static-x86", EM_X86_64)) == EM_X86_64
    assert static_elf_machine(elf(tmp_path / "static-pie", e_type=3)) == EM_AARCH64
    assert static_elf_machine(elf(tmp_path / "dynamic", segments=(PT_LOAD, PT_INTERP, PT_LOAD))) is None
    assert static_elf_machine(elf(tmp_path / "elf32", klass=1)) is None
    assert static_elf_machine(elf(tmp_path / "object", e_type=1)) is None
    truncated = tmp_path / "truncated"
    truncated.write_bytes(elf(tmp_path / "whole", segments=(PT_LOAD, PT_LOAD)).read_bytes()[:100])
    assert static_elf_machine(truncated) is None
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert static_elf_machine(tmp_path / "script") is None
    assert static_elf_machine(tmp_path / "absent") is None


def test_the_candidate_is_a_static_qemu_for_this_isa(tmp_path: Path) -> None:
    dynamic, wrong_isa, static = tmp_path / "dynamic", tmp_path / "wrong", tmp_path / "static"
    for directory in (dynamic, wrong_isa, static):
        directory.mkdir()
    elf(dynamic / "qemu-x86_64", segments=(PT_INTERP, PT_LOAD))
    elf(wrong_isa / "qemu-x86_64", EM_X86_64)
    elf(static / "qemu-x86_64-static")
    dirs = [dynamic, wrong_isa, static]
    assert emulator_candidate("aarch64", dirs) == static / "qemu-x86_64-static"
    assert emulator_candidate("aarch64", dirs[:2]) is None
    # On an x86_64 device the container runs natively: no emulator, whatever is installed.
    elf(wrong_isa / "qemu-x86_64-static", EM_X86_64)
    assert emulator_candidate("x86_64", dirs) is None
    # A symbolic link to a static qemu counts (Debian's binfmt wrappers are links).
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "qemu-x86_64").symlink_to(static / "qemu-x86_64-static")
    assert emulator_candidate("aarch64", [tmp_path / "links"]) == tmp_path / "links" / "qemu-x86_64"


def test_binfmt_entry(tmp_path: Path) -> None:
    qemu = elf(tmp_path / "qemu-x86_64")
    (tmp_path / "wrapper").symlink_to(qemu)
    entry = tmp_path / "qemu-x86_64.binfmt"

    def registered(state: str = "enabled", interpreter: Path = tmp_path / "wrapper", flags: str = "POCF") -> bool:
        entry.write_text(f"{state}\ninterpreter {interpreter}\nflags: {flags}\noffset 0\n"
                         "magic 7f454c4602010100000000000000000002003e00\n")
        return binfmt_runs_x86_64("aarch64", entry)

    assert registered()
    assert not registered(state="disabled")
    assert not registered(flags="P")  # looked up in the container's mounts: absent in an x86_64 image
    assert not registered(interpreter=elf(tmp_path / "dynamic-qemu", segments=(PT_INTERP,)))
    assert not binfmt_runs_x86_64("aarch64", tmp_path / "absent")


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(0o755)
    return path


async def test_emulator_version(tmp_path: Path) -> None:
    qemu = script(tmp_path / "qemu", "print('qemu-x86_64 version 10.0.2 (Debian 1:10.0.2+ds-1)')\n"
                                     "print('Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers')")
    assert await emulator_version(qemu) == "10.0.2"
    assert await emulator_version(script(tmp_path / "old", "print('qemu-x86_64 version 7.2')")) == "7.2"
    assert await emulator_version(script(tmp_path / "mute", "import sys; sys.exit(1)")) == ""
    assert await emulator_version(script(tmp_path / "slow", "import time; time.sleep(30)"), timeout_s=0.5) == ""
    assert await emulator_version(tmp_path / "absent") == ""


async def test_find_emulator(tmp_path: Path) -> None:
    # The ELF built here cannot run: a qemu that does not tell its version is no emulator.
    elf(tmp_path / "qemu-x86_64")
    assert await find_emulator("aarch64", [tmp_path]) == NO_EMULATOR
    assert await find_emulator("x86_64", [tmp_path]) == NO_EMULATOR
    assert os.access(tmp_path / "qemu-x86_64", os.X_OK)
