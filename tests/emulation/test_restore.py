"""Real processes dumped by CRIU and resumed by our restorer, natively and under qemu-x86_64 (system tier).

Each program prints numbered lines with a checksum of its memory; after the restore the lines must go on
from where the dump stopped and match an undisturbed reference run line for line."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from androcond.emulation.build import restorer_path
from androcond.emulation.plan import (
    GLIBC_TUNABLES,
    PLAN_NAME,
    RESTORER_NAME,
    STATUS_NAME,
    EmulationRefused,
    entrypoint,
    make_plan,
)

from ..images.conftest import find_criu
from ..tiers import unavailable

pytestmark = pytest.mark.system

# Another emulator (e.g. a newer qemu-x86_64) can be tried with ANDROCOND_TEST_QEMU.
QEMU = os.environ.get("ANDROCOND_TEST_QEMU", "/usr/bin/qemu-x86_64-static")
# Without these glibc picks AVX-512 and XSAVEC code and registers rseq, which the emulator lacks.
TUNABLES = GLIBC_TUNABLES

COUNTER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#define WORDS (1 << 17)
int main(void) {
    unsigned long *m = malloc(WORDS * sizeof *m);
    for (unsigned long i = 0; i < WORDS; i++) m[i] = i * 0x9e3779b97f4a7c15UL;
    for (unsigned i = 0;; i++) {
        unsigned long sum = 0;
        for (unsigned long j = 0; j < WORDS; j++) sum = sum * 31 + m[j];
        m[i % WORDS] ^= sum;
        printf("%u %016lx\n", i, sum);
        fflush(stdout);
        usleep(30000);
    }
}
"""

# A long-lived worker (alive at the dump) computes the checksum of a 64 MB heap for the main thread; every
# 25 requests it exits, the main thread joins it (pthread_join of a restored thread) and starts another.
THREADS = r"""
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#define WORDS (64UL << 20) / sizeof(unsigned long)
static unsigned long *heap, result;
static sem_t todo, done;
static void *worker(void *arg) {
    (void)arg;
    for (int n = 0; n < 25; n++) {
        sem_wait(&todo);
        unsigned long sum = 0;
        for (unsigned long j = 0; j < WORDS; j += 64) sum = sum * 31 + heap[j];
        result = sum;
        sem_post(&done);
    }
    return (void *)0x2a;
}
int main(void) {
    heap = malloc(WORDS * sizeof *heap);
    for (unsigned long i = 0; i < WORDS; i++) heap[i] = i * 0x9e3779b97f4a7c15UL;
    sem_init(&todo, 0, 0);
    sem_init(&done, 0, 0);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    for (unsigned i = 0;; i++) {
        sem_post(&todo);
        sem_wait(&done);
        heap[(i * 4099UL) % WORDS] ^= result;
        printf("%u %016lx\n", i, result);
        if (i % 25 == 24) {
            void *ret;
            if (pthread_join(t, &ret) != 0 || ret != (void *)0x2a) return 3;
            printf("joined %u\n", i);
            pthread_create(&t, NULL, worker, NULL);
        }
        fflush(stdout);
        usleep(30000);
    }
}
"""

# Listens on loopback (argv[1] = port, non-blocking) and answers each connection with "pong\n".
LISTENER = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (argc < 2 || bind(s, (void *)&a, sizeof a) || listen(s, 8)) return 2;
    fcntl(s, F_SETFL, O_NONBLOCK);
    unsigned answered = 0;
    for (unsigned i = 0;; i++) {
        int c = accept(s, NULL, NULL);
        if (c >= 0) {
            if (write(c, "pong\n", 5) == 5) answered++;
            close(c);
        }
        printf("%u answered %u\n", i, answered);
        fflush(stdout);
        usleep(30000);
    }
}
"""

UNIX_SOCKET = r"""
#include <sys/socket.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return 2;
    for (unsigned i = 0;; i++) { printf("%u\n", i); fflush(stdout); usleep(30000); }
}
"""

TWO_PROCESSES = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    if (fork() == 0) for (;;) pause();
    for (unsigned i = 0;; i++) { printf("%u\n", i); fflush(stdout); usleep(30000); }
}
"""


@dataclass
class Tools:
    criu: str
    restorer: Path
    work: Path


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    criu = find_criu()
    if os.geteuid() != 0:
        unavailable("dumping a process with CRIU needs root")
    if shutil.which("gcc") is None:
        unavailable("gcc is needed to build the restorer and the programs to resume")
    work = tmp_path_factory.mktemp("emulation")
    yield Tools(criu, restorer_path(), work)
    shutil.rmtree(work, ignore_errors=True)


def compile_program(tools: Tools, name: str, source: str, *flags: str, compiler: str = "gcc") -> Path:
    src, binary = tools.work / f"{name}.c", tools.work / f"{name}.bin"
    src.write_text(source)
    subprocess.run([compiler, "-O1", *flags, "-o", str(binary), str(src)], check=True)
    return binary


def lines(path: Path) -> list[str]:
    """Complete lines only: the last one may still be written."""
    text = path.read_text(errors="replace")
    return text.split("\n")[:-1]


def start(argv: list[str], out: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GLIBC_TUNABLES=TUNABLES)
    with out.open("wb") as f:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.DEVNULL, start_new_session=True, env=env
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_lines(path: Path, count: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(got := lines(path)) < count:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} after {len(got)} lines: {got[-3:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(got)} of {count} lines in {timeout}s: {got[-3:]}")
        time.sleep(0.02)
    return got


def reference(argv: list[str], out: Path, count: int) -> list[str]:
    proc = start(argv, out)
    try:
        return wait_lines(out, count, proc)[:count]
    finally:
        stop(proc)


def dump(tools: Tools, argv: list[str], out: Path, images: Path, ready: int = 8) -> int:
    """Start the program, let it print `ready` lines, dump it (CRIU kills it); the line count at the dump."""
    images.mkdir()
    proc = start(argv, out)
    try:
        wait_lines(out, ready, proc)
        result = subprocess.run(
            [tools.criu, "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log", "-v4"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = (images / "dump.log").read_text(errors="replace")
            pytest.fail(f"criu dump failed ({result.returncode}): {result.stderr}\n{log[-3000:]}")
        proc.wait(timeout=10)
    finally:
        stop(proc)
    return len(lines(out))


def restore(
    tools: Tools, images: Path, mode: str, restored_out: Path, *, breaking: str = ""
) -> subprocess.Popen[bytes]:
    plan = images / PLAN_NAME
    (images / STATUS_NAME).write_bytes(b"")
    make_plan(images, plan, mount=str(images))
    if breaking:  # make the restore fail: this image disappears after the plan was made
        (images / breaking).unlink()
    # As on the device: the restorer and the plan in the images directory, which is the mount.
    shutil.copy2(tools.restorer, images / RESTORER_NAME)
    argv = entrypoint(QEMU, mount=str(images))
    assert argv[-2:] == [str(images / RESTORER_NAME), str(plan)]
    if mode == "native":
        argv = argv[-2:]
    elif not Path(QEMU).is_file():
        unavailable(f"{QEMU} not found (Debian's qemu-user-static)")
    with restored_out.open("wb") as f:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.PIPE, start_new_session=True
        )


def resume_and_compare(tools: Tools, name: str, argv: list[str], mode: str, more: int = 12) -> list[str]:
    base = tools.work / f"{name}-{mode}"
    base.mkdir()
    out, images = base / "out.txt", base / "images"
    try:
        at_dump = dump(tools, argv, out, images)
        proc = restore(tools, images, mode, base / "restored-stdout.txt")
        try:
            # fd 1 was a regular file in the dump: the restored process goes on writing it at its position.
            got = wait_lines(out, at_dump + more, proc, timeout=120)
        finally:
            stop(proc)
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        assert (images / STATUS_NAME).read_text() == "ok\n", stderr
        expected = reference(argv, base / "reference.txt", len(got))
        assert got == expected, f"restored output differs from the reference run (dumped at line {at_dump})"
        return got
    finally:
        shutil.rmtree(base, ignore_errors=True)


MODES = ["native", "qemu"]


@pytest.mark.parametrize("mode", MODES)
def test_static(tools: Tools, mode: str) -> None:
    binary = compile_program(tools, f"static-{mode}", COUNTER, "-static")
    resume_and_compare(tools, "static", [str(binary)], mode)


@pytest.mark.parametrize("mode", MODES)
def test_dynamic_pie(tools: Tools, mode: str) -> None:
    binary = compile_program(tools, f"pie-{mode}", COUNTER, "-fPIE", "-pie")
    resume_and_compare(tools, "pie", [str(binary)], mode)


@pytest.mark.parametrize("mode", MODES)
def test_threads_and_64mb_heap(tools: Tools, mode: str) -> None:
    binary = compile_program(tools, f"threads-{mode}", THREADS, "-pthread")
    got = resume_and_compare(tools, "threads", [str(binary)], mode, more=40)
    assert "joined 24" in got  # a thread restored from the dump was joined after the restore


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("link", ["static", "dynamic"])
def test_musl(tools: Tools, mode: str, link: str) -> None:
    """musl keeps its thread pointer and TID its own way; the dynamic build maps musl's loader from its file."""
    if shutil.which("musl-gcc") is None:
        unavailable("musl-gcc is needed (Debian's musl-tools)")
    flags = ("-static",) if link == "static" else ("-pthread",)
    source = COUNTER if link == "static" else THREADS
    binary = compile_program(tools, f"musl-{link}-{mode}", source, *flags, compiler="musl-gcc")
    got = resume_and_compare(tools, f"musl-{link}", [str(binary)], mode, more=40 if link == "dynamic" else 12)
    if link == "dynamic":
        assert "joined 24" in got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("mode", MODES)
def test_listening_socket(tools: Tools, mode: str) -> None:
    binary = compile_program(tools, f"listener-{mode}", LISTENER)
    port = free_port()
    base = tools.work / f"listener-{mode}"
    base.mkdir()
    out, images = base / "out.txt", base / "images"
    try:
        at_dump = dump(tools, [str(binary), str(port)], out, images)
        summary = make_plan(images, base / "probe-plan", mount=str(images))
        assert summary.listening == 1
        proc = restore(tools, images, mode, base / "restored-stdout.txt")
        try:
            wait_lines(out, at_dump + 3, proc)
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                    conn.settimeout(10)
                    assert conn.recv(16) == b"pong\n"
            got = wait_lines(out, at_dump + 10, proc)
        finally:
            stop(proc)
        numbers = [int(line.split()[0]) for line in got]
        assert numbers == list(range(len(numbers)))
        assert got[-1].endswith("answered 3")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [("unix", UNIX_SOCKET, "is a unix socket"), ("fork", TWO_PROCESSES, "2 processes")],
)
def test_refused(tools: Tools, name: str, source: str, expected: str) -> None:
    binary = compile_program(tools, name, source)
    base = tools.work / f"refused-{name}"
    base.mkdir()
    try:
        images = base / "images"
        images.mkdir()
        proc = start([str(binary)], base / "out.txt")
        try:
            wait_lines(base / "out.txt", 3, proc)
            result = subprocess.run(
                [tools.criu, "dump", "-t", str(proc.pid), "-D", str(images), "-o", "dump.log"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, result.stderr
        finally:
            stop(proc)
        with pytest.raises(EmulationRefused, match=expected) as info:
            make_plan(images, base / "plan")
        if name == "unix":
            assert "fd 3" in str(info.value)
        assert not (base / "plan").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("mode", MODES)
def test_failure_is_reported(tools: Tools, mode: str) -> None:
    """A restore that cannot finish says so on the status path and stderr, and exits 2xx."""
    binary = compile_program(tools, f"failing-{mode}", COUNTER, "-static")
    base = tools.work / f"failing-{mode}"
    base.mkdir()
    try:
        images = base / "images"
        dump(tools, [str(binary)], base / "out.txt", images)
        pages = next(images.glob("pages-*.img")).name
        proc = restore(tools, images, mode, base / "restored-stdout.txt", breaking=pages)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 203, stderr
        assert (images / STATUS_NAME).read_text() == "error: open-pages 2\n"
        assert b"androcond-restorer: open-pages" in stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
