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
