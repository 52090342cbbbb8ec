"""Real parts for the recoder tests: the Popcorn stand-in (x86_64 and aarch64 builds), the stand-in aarch64
vdso, plain CRIU dumps of live processes, and a test image for engine A holding the stand-in's variants."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from androcond.recoder import VdsoTemplate

from ..images.conftest import find_criu
from ..testbed import TestBed
from ..testbed.images import rootfs_tar
from ..tiers import unavailable
from .build import PROGRAMS, build_standin, build_vdso_standin, compile_c

STANDIN = "popcorn-standin"
PAGE = 4096

# The register values the stand-in writes at its migration point (popcorn_standin.c).
STANDIN_SP = 0x0000FFFFF7FF0000
STANDIN_PC = 0x0000000000412340
STANDIN_X = tuple(0x0A64000000000000 + i * 0x0101 for i in range(31))
STANDIN_V = tuple(bytes((i * 16 + j) & 0xFF for j in range(16)) for i in range(32))
STANDIN_TLS = 0x0000FFFFB7FF8F20


def require_tools() -> None:
    missing = [tool for tool in ("gcc", "aarch64-linux-gnu-gcc") if shutil.which(tool) is None]
    if missing:
        unavailable(f"{', '.join(missing)} needed (scripts/install-system.sh installs them)")
    if os.geteuid() != 0:
        unavailable("ptrace of other processes and CRIU dumps need root")


@dataclass(frozen=True)
class Builds:
    x86_64: Path  # the stand-in for x86_64 (what runs on the host)
    aarch64: Path  # the stand-in for aarch64 (what `<bin>` is on the device)
    never: Path  # has __migrate_gb_variable but never reaches a migration point
    family: Path  # two processes with a pipe, a unix socket pair and an open file
    ticker: Path  # appends a growing count to a file
    vdso: Path  # the stand-in aarch64 vdso

    def root(self, base: Path) -> Path:
        """A root filesystem with `<bin>`, `<bin>_x86-64`, `<bin>_aarch64` in bin/."""
        bindir = base / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        for name, src in ((STANDIN, self.x86_64), (f"{STANDIN}_x86-64", self.x86_64),
                          (f"{STANDIN}_aarch64", self.aarch64)):
            shutil.copy2(src, bindir / name)
        return base


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    require_tools()
    out = tmp_path_factory.mktemp("recoder-builds")
    return Builds(
        x86_64=build_standin(out / "standin-x86_64", "x86_64"),
        aarch64=build_standin(out / "standin-aarch64", "aarch64"),
        never=compile_c("gcc", out / "never", PROGRAMS / "never_migrates.c"),
        family=compile_c("gcc", out / "family", PROGRAMS / "family.c"),
        ticker=compile_c("gcc", out / "ticker", PROGRAMS / "ticker.c"),
        vdso=build_vdso_standin(out / "vdso-standin.so"),
    )


@pytest.fixture(scope="session")
def vdso(builds: Builds) -> VdsoTemplate:
    return VdsoTemplate.load(builds.vdso, vvar_pages=2, page_size=PAGE)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10,
               failed: Callable[[], str | None] = lambda: None) -> None:
    """A readiness check: poll `condition`; fail with `what` on timeout, or at once if `failed` says why."""
    deadline = time.monotonic() + timeout
    while not condition():
        reason = failed()
        if reason is not None:
            pytest.fail(f"{reason} before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout}s")
        time.sleep(0.01)


class Process:
    """A test program started in its own session (so CRIU needs no --shell-job), killed at the end."""

    def __init__(self, argv: list[str], ready: Path | None = None) -> None:
        self.proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        if ready is not None:
            self.wait_for(lambda: ready.exists() and ready.read_bytes().endswith(b"\n"), "ready file")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
        def exited() -> str | None:
            return None if self.proc.poll() is None else f"test program exited ({self.proc.returncode})"

        wait_until(condition, what, timeout, exited)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill it and whatever it forked (its own process group, from start_new_session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for proc in started:
        proc.stop()


def criu_dump(pid: int, images: Path, *extra: str) -> None:
    """`criu dump` of a live process tree (kills it), failing the test with CRIU's log on error."""
    images.mkdir(parents=True, exist_ok=True)
    work = images.parent / (images.name + ".work")
    work.mkdir(exist_ok=True)
    result = subprocess.run([find_criu(), "dump", "-t", str(pid), "-D", str(images), "-W", str(work),
                             "-o", "dump.log", *extra], capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        log = (work / "dump.log").read_text(errors="replace")[-3000:] if (work / "dump.log").exists() else ""
        pytest.fail(f"criu dump failed ({result.returncode}): {result.stderr}\n{log}")


@dataclass(frozen=True)
class CrossDump:
    images: Path
    root: Path
    pid: int
    exe: Path  # the path the task ran (its files.img name)


@pytest.fixture(scope="session")
def cross_dump(builds: Builds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrossDump]:
    """The stand-in, notified for aarch64 (the real protocol), then dumped by CRIU 4."""
    from androcond.criu.compat import task_tree
    from androcond.popcorn.notify import notify_tasks

    base = tmp_path_factory.mktemp("cross")
    root = builds.root(base / "root")
    exe = root / "bin" / STANDIN
    proc = Process([str(exe), str(base / "ready")], ready=base / "ready")
    try:
        notify_tasks(task_tree(proc.pid), "aarch64", timeout=10)
        criu_dump(proc.pid, base / "images")
        yield CrossDump(base / "images", Path("/"), proc.pid, exe)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def recoder_image(testbed: TestBed, builds: Builds) -> str:
    """A test image on engine A: busybox, the family program and the stand-in as `<bin>` and its variants.
    Tagged by the programs' contents, so a changed program gives a new image."""
    programs = {"family": builds.family, "ticker": builds.ticker, STANDIN: builds.x86_64,
                f"{STANDIN}_x86-64": builds.x86_64, f"{STANDIN}_aarch64": builds.aarch64}
    digest = hashlib.sha256()
    for name, path in sorted(programs.items()):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    image = f"androcond-test/recoder:{digest.hexdigest()[:12]}"
    if not testbed.engine_a.has_image(image):
        testbed.engine_a.cli("import", "-", image, input_bytes=rootfs_tar(programs))
    return image
