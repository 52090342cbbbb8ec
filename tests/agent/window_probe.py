"""Run on the arm64 device by test_emulated_window.py, with the device's own Python, androcond and qemu-x86_64:
the readout's window (androcond/agent/guest_window.py) against the real stub and the real freezer.

    python3 window_probe.py PROGRAM WORKDIR write|quiet [EMULATOR]

PROGRAM (tests/testbed/programs/emulated/window.c, static x86_64) runs under qemu-x86_64 with its stub, in a
cgroup of its own, its stdin a pipe. Once its reader waits in read(2), the guest is stopped and read out as the
agent does; with `write`, five bytes then go into the pipe, so that the read ends after the registers were
read. The cgroup is frozen, the window closed, the stub let go and the cgroup thawed. Prints one JSON object:
what the reader's registers said before and after, the freezer's steps, the bytes in its buffer, and what the
program printed once it ran on.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from androcond.agent.emulator import find_emulator
from androcond.agent.gdb_remote import GdbRemote
from androcond.agent.guest_state import GuestState, GuestThread, read_out
from androcond.agent.guest_window import close_window, syscall_lines

DEADLINE_S = 60.0  # the device emulates everything under TCG: generous
DATA = b"hello"


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


class Freezer:
    """A cgroup of the probe's own (v2, else v1's freezer) for the program."""

    def __init__(self, pid: int) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        self.dir = Path("/sys/fs/cgroup" if v2 else "/sys/fs/cgroup/freezer") / f"androcond-window-{os.getpid()}"
        self.v2 = v2
        self.dir.mkdir()
        (self.dir / "cgroup.procs").write_text(str(pid))
        self.steps: list[str] = []

    def _frozen(self) -> bool:
        if self.v2:
            return "frozen 1" in (self.dir / "cgroup.events").read_text()
        return (self.dir / "freezer.state").read_text().strip() == "FROZEN"

    def _set(self, frozen: bool) -> None:
        if self.v2:
            (self.dir / "cgroup.freeze").write_text("1" if frozen else "0")
        else:
            (self.dir / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
        wait_for("the freezer", lambda: self._frozen() == frozen)

    async def freeze(self) -> None:
        self.steps.append("freeze")
        await asyncio.to_thread(self._set, True)

    async def thaw(self) -> None:
        self.steps.append("thaw")
        await asyncio.to_thread(self._set, False)

    def thawed(self) -> None:
        self._set(False)

    def remove(self) -> None:
        self.dir.rmdir()


def reader_of(state: GuestState, tid: int) -> GuestThread:
    return next(thread for thread in state.threads if thread.tid == tid)


def registers(thread: GuestThread) -> dict[str, int | bool]:
    return {"rax": thread.value("rax"), "orig_rax": thread.value("orig_rax"), "returned": thread.returned}


def read_guest(pid: int, address: int, length: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return mem.read(length)


async def read_out_in_window(qemu: int, sock: Path, tid: int, freezer: Freezer, write_end: int | None,
                             ) -> dict[str, object]:
    """Stop and read the guest out, write into the pipe (unless `write_end` is None), freeze, close the window
    and let the guest go."""
    stub = await GdbRemote.connect(sock)

    async def syscalls(_pid: int) -> dict[int, str]:
        return await asyncio.to_thread(syscall_lines, qemu)

    state = await read_out(stub, None, syscalls)
    before = registers(reader_of(state, tid))
    lines = [state.at_stop.get(tid, "")]
    if write_end is not None:
        os.write(write_end, DATA)
        # The read ends while the stub holds the guest: its host thread leaves read(2) for qemu's wait.
        await asyncio.to_thread(wait_for, "the read to end",
                                lambda: syscall_lines(qemu).get(tid) != state.at_stop.get(tid))
    await freezer.freeze()
    lines.append(syscall_lines(qemu).get(tid, ""))  # frozen: what the window is judged by
    state = await close_window(stub, state, qemu, freeze=freezer.freeze, thaw=freezer.thaw)
    reader = reader_of(state, tid)
    buffer = await asyncio.to_thread(read_guest, qemu, reader.value("rsi"), len(DATA))
    await stub.close()
    await freezer.thaw()
    return {"before": before, "after": registers(reader), "steps": freezer.steps, "stopped": state.stopped,
            "reader": tid, "buffer": buffer.decode(errors="replace"),
            "returned": sorted(thread.tid for thread in state.threads if thread.returned),
            "reader_lines": lines}


def probe(program: Path, work: Path, write: bool, emulator: str) -> dict[str, object]:
    emulator = emulator or asyncio.run(find_emulator(platform.machine())).path
    if not emulator:
        raise SystemExit("no qemu-x86_64 on this device")
    sock = work / "gdb.sock"
    output = work / "program.out"
    read_end, write_end = os.pipe()
    with output.open("wb") as out:
        qemu = subprocess.Popen([emulator, "-g", f"{sock},suspend=n", str(program)], stdin=read_end, stdout=out)
    os.close(read_end)
    freezer: Freezer | None = None
    try:
        freezer = Freezer(qemu.pid)

        def reader_tid() -> int | None:
            # read(0, buf, 63), whatever the host's number for read: by its arguments.
            for tid, line in syscall_lines(qemu.pid).items():
                fields = line.split()
                if len(fields) > 3 and fields[1] == "0x0" and fields[3] == "0x3f":
                    return tid
            return None

        wait_for("the reader in read(2)", lambda: sock.exists() and reader_tid() is not None)
        tid = reader_tid()
        assert tid is not None
        result = asyncio.run(read_out_in_window(qemu.pid, sock, tid, freezer, write_end if write else None))
        if write:
            wait_for("the program to go on", lambda: b"got" in output.read_bytes())
        result["output"] = output.read_text(errors="replace")
        return result
    finally:
        os.close(write_end)
        if freezer is not None:
            freezer.thawed()  # a task frozen by v1's freezer cannot die
        qemu.kill()
        qemu.wait()
        if freezer is not None:
            freezer.remove()


def main() -> None:
    program, work, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    emulator = sys.argv[4] if len(sys.argv) > 4 else ""  # else the one the agent would use
    print(json.dumps(probe(program, work, mode == "write", emulator)))


if __name__ == "__main__":
    main()
