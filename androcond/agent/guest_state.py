"""An emulated container's process read out through qemu's gdb stub: what the way home needs of it that only
the emulator knows (docs/emulation.md, "Going back").

Connecting stops every guest thread. Each thread's registers come from the stub, laid out as its target
description says (fs_base and gs_base included); the memory map is the guest's own view (qemu emulates
/proc/self/maps for the guest: its own mappings are left out). The memory itself is not read here: with
guest_base 0 a guest address is a host address, so /proc/<qemu>/mem gives it at about a thousand times the
stub's speed (16 MiB in 7 ms against 2.7 s, measured with qemu 10.0).

Stopped is not frozen: a thread inside a blocking host syscall finishes it (and may write guest memory) while
the guest is stopped (guest_window.py reads such a thread again once the container is frozen), and the thread
the stub signals to stop sees its syscall end with EINTR. The readout ends with the guest either detached
(running on) or killed; the stub takes no second connection in a run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .gdb_remote import GdbRemote, GdbRemoteError

TARGET_XML_LIMIT = 1 << 16  # qemu's x86_64 description is about 10 KB in three files
MAPS_LIMIT = 1 << 22
_COMMENT = re.compile(rb"<!--.*?-->", re.S)
_TAG = re.compile(r"<(?P<tag>reg|xi:include)\b(?P<attrs>[^<>]*)/?>")
_ATTR = re.compile(r'([\w:]+)\s*=\s*"([^"]*)"')


@dataclass(frozen=True)
class Register:
    name: str
    offset: int  # in the `g` packet's bytes
    size: int  # bytes
    number: int  # for a `p` packet


@dataclass(frozen=True)
class GuestMapping:
    start: int
    end: int
    perms: str  # "r-xp"
    offset: int
    path: str  # "" for anonymous memory, "[stack]", "[vdso]", … as the guest sees them


@dataclass(frozen=True)
class GuestThread:
    tid: int
    registers: dict[str, bytes]  # by the target description's names (little-endian, as the stub sends them)
    # Its syscall was seen to end after the stop and its registers were read again (guest_window.py): rax is
    # that syscall's result, even when it equals the syscall's own number.
    returned: bool = False

    def value(self, name: str) -> int:
        return int.from_bytes(self.registers[name], "little")


@dataclass(frozen=True)
class SigAction:
    signo: int
    handler: int
    flags: int
    restorer: int
    mask: int

    def default(self) -> bool:
        return self.handler == self.flags == self.mask == 0


@dataclass(frozen=True)
class GuestSignals:
    """What the guest said of its signals (guest_signals.py)."""

    thread: int  # the thread whose mask was asked for (the others' come from the host)
    mask: int
    actions: tuple[SigAction, ...]  # every signal's but SIGKILL's and SIGSTOP's
    redelivered: tuple[int, ...]  # signals (gdb's numbers) held while it stepped, delivered again


@dataclass(frozen=True)
class GuestState:
    pid: int  # qemu's, as the container sees it (the guest's getpid() is the same under qemu-user): host_pid
    exe: str  # the guest's program as it sees it
    threads: tuple[GuestThread, ...]  # the main thread (tid == pid) first
    maps: tuple[GuestMapping, ...]
    cwd: str  # the guest's working directory, as it sees it
    signals: GuestSignals | None = None
    signals_unread: str = ""  # why `signals` is None, when it was asked for
    stopped: int = 0  # the thread the stub stopped (0: unknown)
    layout: tuple[Register, ...] = ()  # the `g` packet's registers, to read a thread again
    # Each thread's host syscall right after the stop (guest_window.py), by its id in the container.
    at_stop: Mapping[int, str] = field(default_factory=dict)


# Asked between the stop and the threads' registers: (stub, pid, the stopped thread, register layout, maps).
SignalReader = Callable[[GdbRemote, int, int, list[Register], tuple[GuestMapping, ...]], Awaitable[GuestSignals]]
# Asked right after the stop, with the guest's pid: each thread's host syscall (guest_window.syscall_lines).
SyscallReader = Callable[[int], Awaitable[Mapping[int, str]]]


def register_layout(describe: dict[str, bytes], top: str = "target.xml") -> list[Register]:
    """The registers of the `g` packet, in order, from the target description's files (`describe`: by name,
    includes fetched by the caller). A register with a regnum takes that place, the others follow on."""
    numbered: list[tuple[int, str, int]] = []
    seen: set[str] = set()

    def walk(name: str) -> None:
        if name in seen:
            raise GdbRemoteError(f"the target description includes {name} twice")
        if name not in describe:
            raise GdbRemoteError(f"the target description {name} was not read")
        seen.add(name)
        for tag, attrs in _tags(describe[name]):
            if tag == "xi:include":
                walk(attrs.get("href", ""))
            elif tag == "reg":
                try:
                    number = int(attrs["regnum"]) if "regnum" in attrs else (numbered[-1][0] + 1 if numbered else 0)
                    bits = int(attrs.get("bitsize", "0"))
                except ValueError as exc:
                    raise GdbRemoteError(f"register {attrs.get('name')} is described badly: {exc}") from exc
                if bits <= 0 or bits % 8:
                    raise GdbRemoteError(f"register {attrs.get('name')} has {bits} bits")
                numbered.append((number, attrs.get("name", ""), bits // 8))

    walk(top)
    layout, offset = [], 0
    for number, name, size in sorted(numbered):
        layout.append(Register(name, offset, size, number))
        offset += size
    return layout


def includes(text: bytes) -> list[str]:
    """The files a description includes (to be fetched before register_layout)."""
    return [attrs.get("href", "") for tag, attrs in _tags(text) if tag == "xi:include"]


def _tags(text: bytes) -> list[tuple[str, dict[str, str]]]:
    """The `reg` and `xi:include` elements of a description, scanned, not parsed: qemu's own target.xml uses
    the xi prefix without declaring it (no XML parser takes it), and what listens on the socket in the
    container may send anything, so nothing is expanded. Comments are skipped (qemu's hold registers)."""
    body = _COMMENT.sub(b"", text).decode("utf-8", "replace")
    return [(m["tag"], dict(_ATTR.findall(m["attrs"]))) for m in _TAG.finditer(body)]


def split_registers(raw: bytes, layout: Sequence[Register]) -> dict[str, bytes]:
    """A `g` packet's bytes by register name; the stub may leave the last registers out (qemu: orig_rax)."""
    return {reg.name: raw[reg.offset:reg.offset + reg.size] for reg in layout if reg.offset + reg.size <= len(raw)}


def parse_maps(text: str) -> list[GuestMapping]:
    out = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        start, _, end = fields[0].partition("-")
        try:
            out.append(GuestMapping(int(start, 16), int(end, 16), fields[1], int(fields[2], 16),
                                    fields[5] if len(fields) > 5 else ""))
        except ValueError as exc:
            raise GdbRemoteError(f"not a maps line: {line[:80]!r}") from exc
    return out


class SignalsUnread(GdbRemoteError):
    """The guest's signal state could not be asked for, and nothing was done to it: the readout goes on."""


async def read_out(stub: GdbRemote, signals: SignalReader | None = None,
                   syscalls: SyscallReader | None = None) -> GuestState:
    """The stopped guest's threads, registers, program and memory map, with `signals` its signal state, and
    with `syscalls` each thread's host syscall at the stop. The caller ends the connection (stub.detach or
    stub.kill) and reads the memory from /proc/<pid>/mem meanwhile."""
    await stub.handshake()
    stop = await stub.stop_reason()  # connected: every thread that runs guest code is stopped
    pid = await stub.process()
    # Before any register is read: a thread inside a host syscall now can only leave it for qemu's wait.
    at_stop = await syscalls(pid) if syscalls is not None else {}
    stopped = stop.thread or pid
    describe: dict[str, bytes] = {}
    pending = ["target.xml"]
    while pending:
        name = pending.pop()
        if name in describe:
            continue
        describe[name] = await stub.transfer("features", name, limit=TARGET_XML_LIMIT)
        pending += includes(describe[name])
    layout = register_layout(describe)
    maps = parse_maps((await stub.read_file(f"/proc/{pid}/maps", limit=MAPS_LIMIT)).decode(errors="replace"))
    tids = await stub.threads()
    said, unread = None, ""
    if signals is not None and len(tids) > 1:
        # Each step of the asked thread lets every other thread run on, and the stub cannot stop them again.
        unread = f"it has {len(tids)} threads, and asking the guest would let the others run during the readout"
    elif signals is not None:
        try:
            said = await signals(stub, pid, stopped, layout, tuple(maps))
        except SignalsUnread as exc:
            unread = str(exc)
    threads = [await read_thread(stub, tid, layout) for tid in tids]
    threads.sort(key=lambda thread: thread.tid != pid)
    exe = (await stub.transfer("exec-file", f"{pid:x}")).decode(errors="replace")
    return GuestState(pid, exe, tuple(threads), tuple(maps), await stub.readlink(f"/proc/{pid}/cwd"), said, unread,
                      stopped, tuple(layout), at_stop)


async def read_thread(stub: GdbRemote, tid: int, layout: Sequence[Register]) -> GuestThread:
    """One stopped thread's registers."""
    registers = split_registers(await stub.registers(tid), layout)
    for reg in layout:  # what `g` leaves out (qemu: orig_rax, the number of the syscall last entered)
        if reg.name not in registers:
            registers[reg.name] = await stub.register(reg.number, reg.size)
    return GuestThread(tid, registers)


def host_pid(ns_pid: int, beside: int) -> int:
    """The pid in our namespace of the process that is `ns_pid` in the pid namespace of process `beside` (the
    container's init: the stub names qemu as the container sees it). Blocking. Raises GdbRemoteError."""
    try:
        namespace = os.readlink(f"/proc/{beside}/ns/pid")
    except OSError as exc:
        raise GdbRemoteError(f"the container's process {beside} is gone: {exc}") from exc
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != namespace:
                continue
            ids = task_status(entry / "status").get("NSpid", "").split()
        except OSError:
            continue  # ended meanwhile, or not ours to see
        if ids[-1:] == [str(ns_pid)]:
            return int(entry.name)
    raise GdbRemoteError(f"no process {ns_pid} in the pid namespace of process {beside}")


def task_status(path: Path) -> dict[str, str]:
    """A task's status file as its fields. Blocking; raises OSError."""
    return dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)


def guest_tasks(pid: int, proc: Path = Path("/proc")) -> dict[int, Path]:
    """The task directories of process `pid` (in our namespace), by each thread's id in the process's own pid
    namespace (NSpid's last: the ids the stub names). Blocking; a thread that ends meanwhile is left out."""
    found: dict[int, Path] = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found[int(task_status(task / "status")["NSpid"].split()[-1])] = task
        except (OSError, KeyError, IndexError, ValueError):
            continue
    return found


def read_memory(pid: int, mapping: GuestMapping, length: int | None = None) -> bytes:
    """Guest memory at its own address, from /proc/<pid>/mem (`pid` in our namespace; guest_base 0).
    Blocking."""
    with Path(f"/proc/{pid}/mem").open("rb", buffering=0) as mem:
        mem.seek(mapping.start)
        return mem.read(length if length is not None else mapping.end - mapping.start)
