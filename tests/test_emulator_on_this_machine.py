"""The agent's emulator checks on this machine's own programs (system tier): its qemu-user-static is a static
x86_64 ELF that tells its version, its Python is dynamic."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from androcond.agent.emulator import EM_X86_64, emulator_version, static_elf_machine

from .tiers import unavailable

pytestmark = pytest.mark.system


async def test_this_machines_qemu_and_python() -> None:
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None:
        unavailable("qemu-x86_64 missing: qemu-user-static (scripts/system-packages.txt) provides it")
    assert static_elf_machine(Path(qemu).resolve()) == EM_X86_64
    version = await emulator_version(Path(qemu))
    assert version[:1].isdigit() and version.count(".") >= 1, version
    assert static_elf_machine(Path(sys.executable).resolve()) is None  # it has an interpreter (ld.so)
