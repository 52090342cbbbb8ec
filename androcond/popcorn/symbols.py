"""A few symbols of a static ELF64 little-endian executable, read with `struct` alone.

The device's agent runs the Popcorn notify too (the way back across ISAs), and pyelftools is a host-only
dependency; all the notify needs is the machine, whether the file is position-independent, and one symbol of
`.symtab`, which the section headers locate directly.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

ELF_MAGIC: Final = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB = 2, 1
ET_DYN: Final = 3
SHT_SYMTAB: Final = 2
MACHINES: Final = {62: "x86_64", 183: "aarch64"}
_HEADER: Final = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION: Final = struct.Struct("<IIQQQQIIQQ")
_SYMBOL: Final = struct.Struct("<IBBHQQ")
MAX_TABLE: Final = 64 << 20  # a symbol or string table larger than this is not a program's


class ElfSymbolsError(ValueError):
    """The file is not an ELF64 little-endian executable this reader understands."""


@dataclass(frozen=True)
class ElfSymbols:
    isa: str
    position_independent: bool
    symbols: dict[str, tuple[int, int]]  # name -> (address, size), only those asked for that exist


def read_symbols(path: str | os.PathLike[str], names: tuple[str, ...]) -> ElfSymbols:
    """The ISA, the PIE flag and the named `.symtab` symbols of `path`. Raises ElfSymbolsError or OSError."""
    with Path(path).open("rb") as f:
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size or not header.startswith(ELF_MAGIC):
            raise ElfSymbolsError(f"{path}: not an ELF file")
        ident, e_type, machine, _v, _entry, _phoff, shoff, _flags, _ehsize, _phes, _phnum, shentsize, shnum, _ = \
            _HEADER.unpack(header)
        if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB or shentsize != _SECTION.size:
            raise ElfSymbolsError(f"{path}: not a 64-bit little-endian ELF file")
        f.seek(shoff)
        raw = f.read(shnum * shentsize)
        if len(raw) < shnum * shentsize:
            raise ElfSymbolsError(f"{path}: truncated section headers")
        sections = [_SECTION.unpack_from(raw, i * shentsize) for i in range(shnum)]
        found: dict[str, tuple[int, int]] = {}
        for _name, sh_type, _fl, _addr, offset, size, link, _info, _align, entsize in sections:
            if sh_type != SHT_SYMTAB or not names:
                continue
            if entsize != _SYMBOL.size or link >= shnum or size > MAX_TABLE or sections[link][5] > MAX_TABLE:
                raise ElfSymbolsError(f"{path}: unreadable symbol table")
            strtab = _read(f, sections[link][4], sections[link][5])
            found = _lookup(_read(f, offset, size), strtab, names)
            break  # a static executable has one .symtab
    return ElfSymbols(MACHINES.get(machine, f"machine {machine}"), e_type == ET_DYN, found)


def _read(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ElfSymbolsError("truncated table")
    return data


def _lookup(symtab: bytes, strtab: bytes, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    # Look the names up in the string table once, then scan the fixed-size records (thousands in a static
    # binary) for those offsets; the same bytes may end a longer name, so every "\0name\0" is a candidate.
    offsets: dict[int, str] = {}
    for name in names:
        key = b"\0" + name.encode() + b"\0"
        at = strtab.find(key)
        while at != -1:
            offsets[at + 1] = name
            at = strtab.find(key, at + 1)
    found: dict[str, tuple[int, int]] = {}
    for st_name, _info, _other, _shndx, value, size in _SYMBOL.iter_unpack(symtab[: len(symtab) // 24 * 24]):
        hit = offsets.get(st_name)
        if hit is not None and hit not in found:
            found[hit] = (value, size)
    return found
