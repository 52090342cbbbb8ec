"""The emulated move's test programs (tests/testbed/programs/emulated/) in an x86_64 image with glibc: built
dynamically here and carried with this host's libc and loader, so the device runs exactly the binary the
source ran, under its qemu-x86_64."""

from __future__ import annotations

import hashlib
from pathlib import Path

from androcond.emulation.plan import GLIBC_TUNABLES

from .engines import DockerEngine
from .images import rootfs_tar
from .proc import run

PROGRAMS_DIR = Path(__file__).parent / "programs" / "emulated"
PROGRAMS = ("heap", "http")
LIBC_DIR = "/lib/x86_64-linux-gnu"
LOADER = "/lib64/ld-linux-x86-64.so.2"
# What a glibc process must be started with to move under qemu-x86_64 from an AVX-512 host (docs/emulation.md):
# qemu offers neither AVX-512 nor RTM nor XSAVEC nor rseq, and glibc picks its string functions, its lazy
# binding's register save and rseq at start-up.
TUNABLES = f"GLIBC_TUNABLES={GLIBC_TUNABLES}"


def build(out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    for name in PROGRAMS:
        binary = out_dir / name
        run(["gcc", "-O2", "-pthread", "-o", str(binary), str(PROGRAMS_DIR / f"{name}.c")])
        built[name] = binary
    return built


def install_emulated_image(engine: DockerEngine, work: Path) -> str:
    """The programs, busybox (static, x86_64) and glibc in one image on `engine`, tagged by their bytes. The
    device gets it from the daemon (the image is shipped when the device lacks it)."""
    programs = build(work / "bin")
    files = {f"{LIBC_DIR}/{lib}": Path(LIBC_DIR) / lib for lib in ("libc.so.6", "ld-linux-x86-64.so.2")}
    digest = hashlib.sha256(b"".join(p.read_bytes() for _, p in sorted({**programs, **files}.items())))
    image = f"androcond-test/emulated:{digest.hexdigest()[:12]}"
    if not engine.has_image(image):
        tar = rootfs_tar(programs, files=files, links={LOADER: f"{LIBC_DIR}/ld-linux-x86-64.so.2"})
        engine.cli("import", "-", image, input_bytes=tar)
    return image
