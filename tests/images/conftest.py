"""A real CRIU checkpoint of a tiny static program, made once per test session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..tiers import unavailable

PIPE_DATA = b"androcond-pipe-data"
FILE_DATA = b"androcond-regular-file\n"
MEMORY_PAGES = 64

# Opens a pipe holding data and a regular file, dirties some heap pages, says it is ready by writing
# the file, then sleeps until killed.
PROGRAM = (
    r"""
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int p[2];
    if (argc < 2 || pipe(p) != 0) return 1;
    if (write(p[1], "@PIPE@", @PIPE_LEN@) != @PIPE_LEN@) return 2;
    volatile unsigned char *mem = malloc(@PAGES@ * 4096);
    if (!mem) return 3;
    for (int i = 0; i < @PAGES@ * 4096; i++) mem[i] = (unsigned char)(i / 4096 + 1);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 4;
    if (write(fd, "@FILE@", @FILE_LEN@) != @FILE_LEN@) return 5;
    for (;;) pause();
}
""".replace("@PIPE_LEN@", str(len(PIPE_DATA)))
    .replace("@FILE_LEN@", str(len(FILE_DATA)))
    .replace("@PAGES@", str(MEMORY_PAGES))
    .replace("@PIPE@", PIPE_DATA.decode())
    .replace("@FILE@", FILE_DATA.decode().replace("\n", "\\n"))
)


def find_criu() -> str:
    found = next((c for c in ("/usr/local/sbin/criu", shutil.which("criu")) if c and os.access(c, os.X_OK)), None)
    if found is None:
        unavailable("CRIU 4 not found (/usr/local/sbin/criu or criu in PATH): scripts/install-system.sh installs it")
    return found


def find_crit() -> list[str]:
    if not Path("/usr/bin/crit").is_file():
        unavailable("crit (Debian's criu package) not found at /usr/bin/crit: scripts/install-system.sh installs it")
    return ["/usr/bin/python3", "/usr/bin/crit"]


@dataclass(frozen=True)
class RealDump:
    images: Path
    pid: int
    binary: Path
    regular_file: Path


@pytest.fixture(scope="session")
def real_dump(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealDump]:
    criu = find_criu()
    if os.geteuid() != 0:
        unavailable("dumping a process with CRIU needs root")
    if shutil.which("gcc") is None:
        unavailable("gcc is needed to build the program to checkpoint")
    base = tmp_path_factory.mktemp("criu-dump")
    source, binary = base / "sleeper.c", base / "sleeper"
    source.write_text(PROGRAM)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(binary), str(source)], check=True)
    regular = base / "regular.txt"
    images, work = base / "images", base / "work"
    images.mkdir()
    work.mkdir()
    # start_new_session: the program is its own session leader, so no --shell-job is needed.
    proc = subprocess.Popen(
        [str(binary), str(regular)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not (regular.exists() and regular.read_bytes() == FILE_DATA):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"test program did not get ready (exit status {proc.returncode})")
            time.sleep(0.01)
        result = subprocess.run(
            [criu, "dump", "-t", str(proc.pid), "-D", str(images), "-W", str(work), "-o", "dump.log", "-v4"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = (work / "dump.log").read_text(errors="replace") if (work / "dump.log").exists() else ""
            pytest.fail(f"criu dump failed ({result.returncode}): {result.stderr}\n{log[-3000:]}")
        proc.wait(timeout=10)  # criu dump kills the task; reap it
        yield RealDump(images, proc.pid, binary, regular)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
