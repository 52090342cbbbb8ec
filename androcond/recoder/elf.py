"""What the recoder needs from an executable: ISA, whether it is position-independent, a few symbols from
.symtab, and the GNU build id (pyelftools, so no binutils is needed on the host)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection

from ..popcorn.notify import MIGRATE_VARIABLE, REGS_DST, TLS_DST
from .imageset import RecodeError

_ELF64_SYM: Final = struct.Struct("<IBBHQQ")
MACHINES: Final = {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64"}

# The Popcorn runtime's globals (CRIU-IMAGES.md section 7), named where the notify reads them.
POPCORN_SYMBOLS: Final = (MIGRATE_VARIABLE, REGS_DST, TLS_DST)


@dataclass(frozen=True)
class Symbol:
    address: int
    size: int


@dataclass(frozen=True)
class ElfInfo:
    path: str
    isa: str  # "x86_64", "aarch64", or the raw e_machine name for others
    position_independent: bool
    symbols: dict[str, Symbol]  # only the names asked for that exist
    build_id: bytes | None
    size: int

    def missing(self, names: Iterable[str]) -> list[str]:
        return [name for name in names if name not in self.symbols]


def popcorn_problems(info: ElfInfo, isa: str | None, symbols: Iterable[str], name: str | None = None) -> list[str]:
    """Why `info` cannot serve as a Popcorn binary of `isa` (None: any ISA) carrying `symbols`; `name` is
    what to call the file (default: its file name)."""
    name = name or Path(info.path).name
    problems = []
    if isa is not None and info.isa != isa:
        problems.append(f"{name} is an {info.isa} binary, not {isa}")
    if info.position_independent:
        problems.append(f"{name} is position-independent (Popcorn binaries are linked at fixed addresses)")
    missing = info.missing(symbols)
    if missing:
        problems.append(f"{name} lacks {', '.join(missing)} (not a Popcorn binary)")
    return problems


def read_elf(path: str | os.PathLike[str], names: Iterable[str] = POPCORN_SYMBOLS) -> ElfInfo:
    """Read an ELF file's header, the named .symtab symbols and its build id. Raises RecodeError."""
    p = Path(path)
    wanted = set(names)
    try:
        with p.open("rb") as f:
            elf = ELFFile(f)
            machine = str(elf.header.e_machine)
            symbols: dict[str, Symbol] = {}
            build_id: bytes | None = None
            for section in elf.iter_sections():
                if isinstance(section, SymbolTableSection) and section.name == ".symtab" and wanted:
                    symbols = _find_symbols(elf, section, wanted)
                elif isinstance(section, NoteSection):
                    for note in section.iter_notes():
                        if note["n_type"] == "NT_GNU_BUILD_ID":
                            build_id = bytes.fromhex(str(note["n_desc"]))
            return ElfInfo(
                path=str(p),
                isa=MACHINES.get(machine, machine),
                position_independent=str(elf.header.e_type) == "ET_DYN",
                symbols=symbols,
                build_id=build_id,
                size=os.fstat(f.fileno()).st_size,
            )
    except OSError as exc:
        raise RecodeError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    except ELFError as exc:
        raise RecodeError(f"{p}: not an ELF file: {exc}") from exc


def _find_symbols(elf: ELFFile, symtab: SymbolTableSection, wanted: set[str]) -> dict[str, Symbol]:
    """The wanted symbols of .symtab. A static binary has thousands of symbols, and pyelftools parses each
    into a dict (~0.1 s); for ELF64 little-endian we look the names up in the string table and scan the
    raw 24-byte Elf64_Sym records instead."""
    if elf.elfclass != 64 or not elf.little_endian:
        found = ((name, symtab.get_symbol_by_name(name)) for name in wanted)
        return {name: Symbol(int(syms[0]["st_value"]), int(syms[0]["st_size"])) for name, syms in found if syms}
    strtab = elf.get_section(symtab["sh_link"]).data()
    offsets: dict[int, str] = {}
    for name in wanted:
        key = b"\0" + name.encode() + b"\0"
        at = strtab.find(key)
        while at != -1:  # the same bytes may end a longer name too: every "\0name\0" is a candidate
            offsets[at + 1] = name
            at = strtab.find(key, at + 1)
    result: dict[str, Symbol] = {}
    for st_name, _info, _other, _shndx, value, size in _ELF64_SYM.iter_unpack(symtab.data()):
        hit = offsets.get(st_name)
        if hit is not None and hit not in result:
            result[hit] = Symbol(value, size)
    return result


def build_id_words(build_id: bytes | None) -> list[int]:
    """The build id as CRIU stores it in reg_file_entry.build_id: little-endian u32 words."""
    if not build_id:
        return []
    padded = build_id + b"\0" * (-len(build_id) % 4)
    return [int.from_bytes(padded[i : i + 4], "little") for i in range(0, len(padded), 4)]
