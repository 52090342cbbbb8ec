"""Build the recoder's test programs (plain functions, shared by the tests' fixtures and bench/)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Final

PROGRAMS: Final = Path(__file__).parent / "programs"
STATIC: Final = ("-static", "-O1")


def compile_c(compiler: str, out: Path, *sources: Path, flags: tuple[str, ...] = STATIC) -> Path:
    subprocess.run([compiler, *flags, "-o", str(out), *map(str, sources)], check=True)
    return out


def build_standin(out: Path, isa: str) -> Path:
    """The Popcorn stand-in for `isa` ("x86_64" with gcc, "aarch64" with aarch64-linux-gnu-gcc)."""
    compiler = "gcc" if isa == "x86_64" else "aarch64-linux-gnu-gcc"
    return compile_c(compiler, out, PROGRAMS / "popcorn_standin.c")


def build_vdso_standin(out: Path) -> Path:
    """The stand-in aarch64 vdso: a shared object exporting the arm64 vdso's symbols (not a kernel's vdso)."""
    flags = ("-shared", "-nostdlib", "-fPIC", f"-Wl,--version-script={PROGRAMS / 'vdso_standin.lds'}",
             "-Wl,-soname=linux-vdso.so.1", "-Wl,-z,max-page-size=4096", "-Wl,--build-id=none", "-s")
    return compile_c("aarch64-linux-gnu-gcc", out, PROGRAMS / "vdso_standin.S", flags=flags)


TWOISA_DIR: Final = PROGRAMS / "twoisa"
COMPILERS: Final = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc"}
# Freestanding, static, non-PIE, one linker script; orphan sections are errors, so nothing lands where the
# script did not put it (and both binaries keep identical segments).
TWOISA_FLAGS: Final = (
    "-static", "-nostdlib", "-fno-pie", "-no-pie", "-ffreestanding", "-fno-builtin", "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fno-tree-loop-distribute-patterns", "-O1",
    "-Wall", "-Wextra", "-Werror", f"-Wl,-T,{TWOISA_DIR / 'twoisa.ld'}", "-Wl,--orphan-handling=error",
    "-Wl,--build-id=sha1", "-Wl,-z,max-page-size=4096", "-Wl,-z,common-page-size=4096", "-Wl,-z,noexecstack",
)
ISA_FLAGS: Final = {"x86_64": (), "aarch64": ("-mgeneral-regs-only",)}


def build_twoisa(out_dir: Path, *, regset_in_bss: bool = False) -> dict[str, Path]:
    """The two-ISA program (programs/twoisa/), one binary per ISA: {"x86_64": path, "aarch64": path}. With
    `regset_in_bss`, its regs_dst and tls_dst lie in .bss (anonymous memory) instead of .data."""
    out_dir.mkdir(parents=True, exist_ok=True)
    variant = ("-DTWOISA_REGSET_IN_BSS",) if regset_in_bss else ()
    stem = "twoisa-bss" if regset_in_bss else "twoisa"
    return {isa: compile_c(compiler, out_dir / f"{stem}-{isa}", TWOISA_DIR / "twoisa.c",
                           flags=TWOISA_FLAGS + ISA_FLAGS[isa] + variant)
            for isa, compiler in COMPILERS.items()}
