"""The emulation's refusals and CPU facts read from real processes of this machine (system tier): small
Python programs holding what the emulated restore can and cannot bring back."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from androcond.emulation.cpu import cpu_fit, read_source_cpu
from androcond.emulation.live import live_refusals

pytestmark = pytest.mark.system

# Each program sets itself up, then says so through its ready file and sleeps until killed.
WAIT = "open(sys.argv[1], 'w').write('ready\\n'); time.sleep(600)"
SOCKETPAIR = "import socket, sys, time\na, b = socket.socketpair()\n" + WAIT
THREAD_AND_FILE = f"""import sys, threading, time
log = open(sys.argv[1] + '.data', 'w')
threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
{WAIT}"""
LISTENER = "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n" + WAIT
EVENTFD_AND_PIPE = "import os, sys, time\ne = os.eventfd(0)\nr, w = os.pipe()\n" + WAIT


class Programs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, code: str, env: dict[str, str] | None = None) -> int:
        ready = self.tmp / f"ready-{len(self.started)}"
        proc = subprocess.Popen([sys.executable, "-c", code, str(ready)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
        self.started.append(proc)
        deadline = time.monotonic() + 20
        while not (ready.exists() and ready.read_text().endswith("\n")):
            assert proc.poll() is None, f"the test program exited ({proc.returncode})"
            assert time.monotonic() < deadline, "the test program did not get ready"
            time.sleep(0.02)
        return proc.pid

    def stop(self) -> None:
        for proc in self.started:  # only ours, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[Programs]:
    started = Programs(tmp_path)
    yield started
    started.stop()


def test_a_unix_socketpair_is_refused(programs: Programs) -> None:
    pid = programs.start(SOCKETPAIR)
    refusals = live_refusals([pid])
    assert len(refusals) == 2, refusals
    for refusal in refusals:
        assert re.fullmatch(rf"process {pid} \(python3?[\d.]*\): fd \d+ is a unix socket: the emulated restore "
                            r"recreates only TCP/UDP sockets", refusal), refusal


def test_threads_a_file_and_a_listening_socket_pass(programs: Programs) -> None:
    pid = programs.start(THREAD_AND_FILE)
    assert len(list(Path(f"/proc/{pid}/task").iterdir())) == 2
    assert live_refusals([pid]) == []
    assert live_refusals([programs.start(LISTENER)]) == []


def test_an_eventfd_a_pipe_and_two_processes(programs: Programs) -> None:
    pid = programs.start(EVENTFD_AND_PIPE)
    refusals = live_refusals([pid])
    whats = [re.search(r"fd \d+ is an? \w+", refusal) for refusal in refusals]
    assert [what[0] if what else "" for what in whats] == [
        "fd 3 is an eventfd", "fd 4 is a pipe", "fd 5 is a pipe"], refusals
    other = programs.start(THREAD_AND_FILE)
    assert live_refusals([pid, other])[0].startswith(f"the container runs 2 processes ({pid}, {other})")


def test_cpu_facts_of_a_live_glibc_process(programs: Programs) -> None:
    plain = read_source_cpu(programs.start(THREAD_AND_FILE))
    assert plain.libc == "glibc" and plain.tunables == "" and "SSE2" in plain.host_features
    fit = cpu_fit(plain, "10.0.2")
    if fit.ok:
        return  # this host has nothing qemu 10 lacks: nothing to mask
    # Started as the refusal says, the same program may move.
    tunables = re.search(r"GLIBC_TUNABLES=(\S+)", fit.reason)
    assert tunables is not None, fit.reason
    masked = read_source_cpu(programs.start(THREAD_AND_FILE, {"GLIBC_TUNABLES": tunables[1]}))
    assert masked.tunables == tunables[1]
    assert cpu_fit(masked, "10.0.2").ok, cpu_fit(masked, "10.0.2").reason
