"""Test images, made with `docker import` from a tiny root filesystem (no registry is reachable).

``androcond-test/busybox:<hash>``: a static busybox with its applets, and test programs built with ``gcc -static``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from .engines import DockerEngine
from .proc import run

BUSYBOX = Path("/bin/busybox")
PROGRAMS_DIR = Path(__file__).parent / "programs"
PROGRAMS = ("counter",)


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for name in PROGRAMS:
        digest.update((PROGRAMS_DIR / f"{name}.c").read_bytes())
    return digest.hexdigest()[:12]


# The tag follows the test programs' sources, so an edited program gets a fresh image on every engine.
TEST_IMAGE = f"androcond-test/busybox:{_sources_digest()}"


def build_programs(out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for name in PROGRAMS:
        source = PROGRAMS_DIR / f"{name}.c"
        binary = out_dir / name
        if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
            run(["gcc", "-static", "-O2", "-o", str(binary), str(source)])
        built[name] = binary
    return built


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def rootfs_tar(programs: dict[str, Path], busybox: Path = BUSYBOX, *, files: dict[str, Path] | None = None,
               links: dict[str, str] | None = None) -> bytes:
    """A busybox root with `programs` in bin/. `busybox` may be another ISA's (its applets are the host's).
    `files` puts more at their paths (e.g. a shared library), `links` adds symlinks (path → target)."""
    applets = run([str(BUSYBOX), "--list"]).stdout.decode().split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "data", "var", "root"):
            _add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
        _add_file(tar, "bin/busybox", busybox.read_bytes())
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type = tarfile.SYMTYPE
                link.linkname = "busybox"
                tar.addfile(link)
        for name, path in programs.items():
            _add_file(tar, f"bin/{name}", path.read_bytes())
        made = set()
        for name, path in sorted((files or {}).items()):
            parts = name.strip("/").split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made and directory not in ("bin", "etc", "tmp", "var"):
                    made.add(directory)
                    _add_dir(tar, directory)
            _add_file(tar, name.strip("/"), path.read_bytes(), 0o755)
        for name, target in sorted((links or {}).items()):
            link = tarfile.TarInfo(name.strip("/"))
            link.type = tarfile.SYMTYPE
            link.linkname = target
            tar.addfile(link)
        _add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        _add_file(tar, "etc/image-file", b"shipped in the image\n", 0o644)
    return buf.getvalue()


def import_test_image(engine: DockerEngine, tar_bytes: bytes) -> None:
    if not engine.has_image(TEST_IMAGE):
        engine.cli("import", "-", TEST_IMAGE, input_bytes=tar_bytes)
