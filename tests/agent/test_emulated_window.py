"""The readout's window on the arm64 device (androcond/agent/guest_window.py): qemu 10's stub stops the threads
that run guest code, but a thread blocked in a host syscall stays there, and its syscall can end after its
registers were read and before the freezer holds it. Its result and the bytes it wrote belong together.

tests/agent/window_probe.py runs on the device, with its own Python, androcond and qemu-x86_64, a static x86_64
program whose reader waits in read(2) on a pipe; it reads the guest out as the agent does. With bytes written
into the pipe after the stop, the reader's read ends in the window: the window is closed by reading that thread
again, and its rax is the read's 5, beside "hello" in its buffer. Without them, nothing is thawed and the read
stays in flight (run again at home).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..testbed.arm64 import Arm64Device
from ..testbed.proc import run
from .arm64_bed import ARM64_MARKS

pytestmark = ARM64_MARKS

PROGRAM = Path(__file__).parents[1] / "testbed" / "programs" / "emulated" / "window.c"
PROBE = Path(__file__).parent / "window_probe.py"


@pytest.fixture(scope="module")
def on_device(arm64_device: Arm64Device, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A directory on the device holding the program (built static here) and the probe."""
    work = tmp_path_factory.mktemp("window")
    run(["gcc", "-O2", "-static", "-pthread", "-o", str(work / "window"), str(PROGRAM)])
    remote = f"/tmp/androcond-window-{uuid.uuid4().hex[:8]}"
    arm64_device.adb_shell(f"mkdir -p {remote}")
    arm64_device.adb_push(work / "window", f"{remote}/window")
    arm64_device.adb_push(PROBE, f"{remote}/window_probe.py")
    yield remote
    arm64_device.adb_shell(f"rm -rf {remote}")


def probe(device: Arm64Device, remote: str, mode: str) -> dict[str, Any]:
    out = device.adb_shell(f"cd {remote} && python3 window_probe.py {remote}/window {remote} {mode}", timeout=300)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"the probe said no result:\n{out}"
    result: dict[str, Any] = json.loads(lines[-1])
    print(mode, result)  # the reader's syscall lines, at the stop and frozen, are in it
    return result


def test_a_read_that_ends_in_the_window_is_read_again(arm64_device: Arm64Device, on_device: str) -> None:
    result = probe(arm64_device, on_device, "write")
    assert result["stopped"] != result["reader"], result  # the stub's stop ends the stopped thread's syscall
    # At the stop the reader was in flight: rax = orig_rax = read's 0.
    assert result["before"] == {"rax": 0, "orig_rax": 0, "returned": False}, result
    # Its read ended after that: thawed once to read it again, frozen again.
    # A thaw may restart the sleeper's interrupted sleep (cgroup v2's freezer): one more round, nothing returned.
    assert result["steps"][:3] == ["freeze", "thaw", "freeze"] and result["steps"][-1] == "thaw", result
    assert result["after"] == {"rax": 5, "orig_rax": 0, "returned": True}, result
    assert result["returned"] == [result["reader"]], "only the reader's syscall ended"
    assert result["buffer"] == "hello"
    assert result["output"] == "got 5: hello\n", "the guest went on from the read's end, and read the bytes once"


def test_a_read_still_waiting_stays_in_flight(arm64_device: Arm64Device, on_device: str) -> None:
    result = probe(arm64_device, on_device, "quiet")
    assert result["stopped"] != result["reader"], result
    # Every other thread waits without end too (the main thread joins the reader, the sleeper sleeps 30 s).
    assert result["steps"] == ["freeze", "thaw"], f"nothing ended, so nothing was thawed in between: {result}"
    assert result["after"] == {"rax": 0, "orig_rax": 0, "returned": False}, result
    assert result["returned"] == [], result
