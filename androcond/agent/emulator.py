"""The device's emulator for x86_64 containers: a static qemu-x86_64 built for its own ISA (it runs inside the
x86_64 container, which has no loader or libc for the device's ISA), its version, and whether binfmt_misc hands
x86_64 programs to it inside containers too (then `docker exec` works in an emulated container)."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..aio import CommandTimeout, run
from ..logging import get_logger

log = get_logger(__name__)

EM_X86_64, EM_AARCH64 = 62, 183  # ELF e_machine
ELF_MACHINES = {"x86_64": EM_X86_64, "aarch64": EM_AARCH64}
# Where it can emulate x86_64: on an x86_64 device the container runs natively, emulating it would be pointless.
EMULATES_X86_64 = frozenset({"aarch64"})
EMULATOR_NAMES = ("qemu-x86_64", "qemu-x86_64-static")  # Debian's qemu-user (trixie: static), qemu-user-static
BINFMT_X86_64 = Path("/proc/sys/fs/binfmt_misc/qemu-x86_64")
VERSION_TIMEOUT_S = 10.0
_PT_INTERP = 3
_QEMU_VERSION = re.compile(rb"version (\d+\.\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Emulator:
    path: str = ""  # "" when there is none that can run inside an x86_64 container
    version: str = ""
    binfmt: bool = False


NO_EMULATOR = Emulator()


def static_elf_machine(path: Path) -> int | None:
    """The e_machine of a statically linked 64-bit little-endian ELF executable (no PT_INTERP), else None.

    The emulator runs inside the x86_64 container, which has no aarch64 dynamic loader or libc: only a static
    qemu starts there. Reads the header and the program headers, nothing more."""
    try:
        with path.open("rb") as f:
            header = f.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
                return None  # not ELF, or not ELFCLASS64 / ELFDATA2LSB
            e_type, e_machine = int.from_bytes(header[16:18], "little"), int.from_bytes(header[18:20], "little")
            phoff = int.from_bytes(header[32:40], "little")
            phentsize, phnum = int.from_bytes(header[54:56], "little"), int.from_bytes(header[56:58], "little")
            if e_type not in (2, 3) or phentsize < 56 or not 0 < phnum < 4096:
                return None  # ET_EXEC or ET_DYN (static-pie), with program headers
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return None
    if len(table) < phentsize * phnum:
        return None
    for i in range(phnum):
        if int.from_bytes(table[i * phentsize:i * phentsize + 4], "little") == _PT_INTERP:
            return None
    return e_machine


def emulator_candidate(isa: str, dirs: list[Path] | None = None) -> Path | None:
    """A static qemu-x86_64 built for this device's ISA, in `dirs` (default: PATH, then /usr/bin). None on a
    device that runs x86_64 itself. Blocking."""
    machine = ELF_MACHINES.get(isa)
    if isa not in EMULATES_X86_64 or machine is None:
        return None
    if dirs is None:
        dirs = [Path(d) for d in os.environ.get("PATH", "").split(os.pathsep) if d] + [Path("/usr/bin")]
    for directory in dirs:
        for name in EMULATOR_NAMES:
            path = directory / name
            if os.access(path, os.X_OK) and static_elf_machine(path.resolve()) == machine:
                return path
    return None


def binfmt_runs_x86_64(isa: str, entry: Path = BINFMT_X86_64) -> bool:
    """binfmt_misc hands x86_64 programs to a static qemu inside containers too: the entry is enabled, its
    flags hold F (the interpreter opened when registered, not looked up in the container) and its interpreter
    is a static ELF for this ISA. Blocking."""
    try:
        text = entry.read_text()
    except OSError:
        return False
    lines = text.splitlines()
    fields = dict(line.split(None, 1) for line in lines[1:] if len(line.split(None, 1)) == 2)
    flags = fields.get("flags:", "")
    interpreter = fields.get("interpreter")
    if not lines or lines[0].strip() != "enabled" or "F" not in flags or interpreter is None:
        return False
    return static_elf_machine(Path(interpreter).resolve()) == ELF_MACHINES.get(isa)


async def emulator_version(path: Path, timeout_s: float = VERSION_TIMEOUT_S) -> str:
    """`qemu-x86_64 --version`'s number ("10.0.2"); "" when it does not answer."""
    try:
        finished = await run([str(path), "--version"], timeout_s=timeout_s)
    except (OSError, CommandTimeout) as exc:
        log.warning("the emulator did not tell its version", emulator=str(path), error=str(exc))
        return ""
    match = _QEMU_VERSION.search(finished.output)
    if finished.returncode != 0 or match is None:
        log.warning("the emulator did not tell its version", emulator=str(path), output=finished.text(200))
        return ""
    return match[1].decode()


async def find_emulator(isa: str, dirs: list[Path] | None = None, binfmt_entry: Path = BINFMT_X86_64) -> Emulator:
    """The device's emulator for x86_64 containers, NO_EMULATOR when it has none that works (or needs none)."""
    path = await asyncio.to_thread(emulator_candidate, isa, dirs)
    if path is None:
        return NO_EMULATOR
    version = await emulator_version(path)
    if not version:
        return NO_EMULATOR  # a qemu that cannot say its version cannot be trusted with a restore either
    return Emulator(str(path), version, await asyncio.to_thread(binfmt_runs_x86_64, isa, binfmt_entry))
