"""Build the restorer (restorer.c) with the system's C compiler: `python -m androcond.emulation.build`.

The binary goes next to restorer.c when that directory is writable (a checkout, or packaging before the
wheel is made), else into a per-user cache directory. It is rebuilt when missing or older than the source.
Imports nothing but the standard library and two dependency-free modules: packaging runs it (setup.py) before
any of androcond's dependencies are installed.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

from ..errors import AndrocondError
from ..protocol.emulation import RESTORER as RESTORER_NAME

SOURCE: Final = Path(__file__).with_name("restorer.c")
# No libc, no stack protector (no TLS to read it from), non-PIE at 0x10000: qemu then picks guest_base 0,
# and an emulated brk starting this low answers glibc's requests with a failure it handles (mmap instead).
CFLAGS: Final = [
    "-static",
    "-nostdlib",
    "-ffreestanding",
    "-fno-stack-protector",
    "-fno-pie",
    "-no-pie",
    "-fno-asynchronous-unwind-tables",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,-Ttext-segment=0x10000",
    "-Wl,--build-id=none",
]


class RestorerBuildError(AndrocondError):
    """restorer.c could not be compiled (no C compiler, or it failed)."""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "androcond" / "emulation"


def _fresh(binary: Path) -> bool:
    return binary.is_file() and binary.stat().st_mtime >= SOURCE.stat().st_mtime


def _compiler() -> str:
    # The restorer is an x86_64 program whatever this machine is: elsewhere only a cross compiler will do.
    names: tuple[str, ...] = ("cc", "gcc") if platform.machine() == "x86_64" else ("x86_64-linux-gnu-gcc",)
    candidates: list[str] = [os.environ.get("CC") or "", *names]
    for name in candidates:
        if name and shutil.which(name):
            return name
    raise RestorerBuildError(f"no C compiler for x86_64 ({', '.join(names)}) to build the emulation restorer")


def build(target: Path) -> Path:
    """Compile restorer.c into `target` (atomically: a half-written binary is never seen)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".restorer-", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run(
            [_compiler(), *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RestorerBuildError(f"building the restorer failed: {result.stderr.strip()}")
        Path(tmp).chmod(0o755)
        Path(tmp).replace(target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def restorer_path() -> Path:
    """The built restorer, built first when missing or older than restorer.c."""
    local = SOURCE.with_name(RESTORER_NAME)
    if _fresh(local):
        return local
    if os.access(SOURCE.parent, os.W_OK):
        return build(local)
    cached = _cache_dir() / RESTORER_NAME
    if _fresh(cached):
        return cached
    return build(cached)


def main() -> None:
    try:
        print(restorer_path())
    except RestorerBuildError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
