"""The freeze of an emulated container on the way home: it is read out of its emulator instead of being dumped
by CRIU (whose images would describe qemu, not the x86_64 program). qemu's gdb stub stops every guest thread
and gives their registers, the guest's memory map and working directory (guest_state.py); the container is
paused right after (its cgroup's freezer: nothing runs while its memory is read), and a thread whose syscall
ended in between is read again (guest_window.py); the stub's connection is closed, which qemu reads as "go on"
once it runs again; then the restorer's plan and the guest's pages are written into the checkpoint directory
(guest_plan.py), and go to the daemon like a checkpoint.

From then on the container is paused, as a flat freeze's tasks are (marked the same way, criu/leftovers.py):
the daemon's word unpauses it (the rollback: the guest runs on where it stopped) or removes it. qemu's stub
serves one connection per run, so a container read out once cannot be read out again: that is remembered in
the spool, and a second way home is refused with the reason (the first's rollback leaves it running).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ..criu.leftovers import mark_flat
from ..engine import Engine, EngineError
from ..logging import get_logger
from ..protocol.emulation import MOUNT, STATUS, STUB_MOUNT
from .emulated import stub_socket
from .errors import AgentError
from .gdb_remote import GdbRemote, GdbRemoteError
from .guest_fds import children, guest_fds, sockets
from .guest_plan import USER_TOP, GuestPlanRefused, GuestPlanSummary, write_plan
from .guest_signals import read_signals, thread_masks
from .guest_state import GuestMapping, GuestSignals, Register, host_pid, read_out
from .guest_window import close_window, syscall_lines

log = get_logger(__name__)
READOUTS = "readouts"  # beneath the spool: one empty file per container whose stub was used


class ReadoutError(AgentError):
    """The container could not be read out of its emulator (nothing stays paused)."""


def emulated(inspect: dict[str, Any]) -> bool:
    """Whether the engine runs this container under androcond's emulator: the restorer's directory is mounted
    at MOUNT (emulated.mounted)."""
    binds = (inspect.get("HostConfig") or {}).get("Binds") or []
    return any(str(bind).split(":")[1:2] == [MOUNT] for bind in binds)


def _used_mark(spool: Path, container_id: str) -> Path:
    return spool / READOUTS / container_id


def blocker(inspect: dict[str, Any], spool: Path | None) -> str:
    """Why this emulated container cannot be read out, "" when it can. Blocking."""
    tmpfs = (inspect.get("HostConfig") or {}).get("Tmpfs") or {}
    if STUB_MOUNT not in tmpfs:
        return ("it runs without qemu's gdb stub (its device's qemu-x86_64 was older than 10.0 when it moved "
                "there), so its registers cannot be read out of the emulator")
    if spool is None:
        return "this agent has no spool directory to keep its readouts in"
    if _used_mark(spool, str(inspect["Id"])).exists():
        return ("it was read out once already (a way home that rolled back): qemu's stub answers one connection "
                "per run, and its emulator cannot be restarted (the restorer's files are gone once it ran)")
    emulators = children(int((inspect.get("State") or {}).get("Pid") or 0))
    if len(emulators) == 1:  # the init's one child: the emulator (the readout checks again, frozen)
        refused = guest_fds(emulators[0]).refused
        if refused:
            return "; ".join(refused)
    return ""


def forget(spool: Path | None, container_id: str) -> None:
    """The container is gone: its mark goes with it. Blocking."""
    if spool is not None:
        _used_mark(spool, container_id).unlink(missing_ok=True)


def _marked(spool: Path) -> list[str]:
    try:
        return [entry.name for entry in (spool / READOUTS).iterdir()]
    except FileNotFoundError:
        return []


async def sweep(engine: Engine, spool: Path) -> list[str]:
    """Remove the marks of containers the engine no longer has (removed outside androcond after a way home
    rolled back); the ids swept. A container id is never reused, so a mark without its container is moot."""
    marked = await asyncio.to_thread(_marked, spool)
    if not marked:
        return []
    present = {str(c.get("Id")) for c in await engine.list_containers(all_states=True)}
    gone = [cid for cid in marked if cid not in present]
    for cid in gone:
        await asyncio.to_thread(forget, spool, cid)
    return gone


async def freeze(engine: Engine, inspect: dict[str, Any], checkpoint_dir: Path, spool: Path) -> GuestPlanSummary:
    """Read the running container out into `checkpoint_dir` (the plan and its pages) and leave it paused. A
    failure before the plan is whole lets it run on and raises ReadoutError."""
    cid = str(inspect["Id"])
    init_pid = int(inspect["State"].get("Pid") or 0)
    await asyncio.to_thread(mark_flat, checkpoint_dir)  # before the pause: whoever settles later unpauses
    mark = _used_mark(spool, cid)
    paused = False
    stub: GdbRemote | None = None
    emulators = await asyncio.to_thread(children, init_pid)
    try:
        # The sockets qemu holds before the agent connects: the one it accepts then is the stub's. Its threads'
        # masks too: the thread the stub stops shows every signal blocked until it runs again.
        before = await asyncio.to_thread(sockets, emulators[0]) if len(emulators) == 1 else set()
        masks_before = await asyncio.to_thread(thread_masks, emulators[0]) if len(emulators) == 1 else {}
        await asyncio.to_thread(mark.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(mark.touch)  # before connecting: an attempt may use the stub's one connection up
        stub = await GdbRemote.connect(stub_socket(init_pid))

        async def signals(stub: GdbRemote, pid: int, tid: int, layout: list[Register],
                          maps: tuple[GuestMapping, ...]) -> GuestSignals:
            qemu = await asyncio.to_thread(host_pid, pid, init_pid)
            return await read_signals(stub, pid, tid, layout, maps, qemu_pid=qemu, top=USER_TOP)

        async def syscalls(pid: int) -> dict[int, str]:
            # While the guest is held: its one emulator as seen before connecting (checked against the pid the
            # stub names below) spares a walk through /proc.
            qemu = emulators[0] if len(emulators) == 1 else await asyncio.to_thread(host_pid, pid, init_pid)
            return await asyncio.to_thread(syscall_lines, qemu)

        async def pause() -> None:
            nonlocal paused
            await engine.pause(cid)
            paused = True

        async def unpause() -> None:
            nonlocal paused
            await engine.unpause(cid)
            paused = False

        state = await read_out(stub, signals, syscalls)  # every guest thread stopped from here
        # Paused before the stub lets go: the guest must not run between its registers and its memory. A
        # thread whose syscall ended after the stop is read again (thawed for that: guest_window.py). A frozen
        # qemu cannot answer the stub, so nothing more is asked of it; closing the connection tells it to go on
        # once it is thawed (gdbstub: end of file, no signal).
        await pause()
        qemu = await asyncio.to_thread(host_pid, state.pid, init_pid)
        if emulators != [qemu]:
            raise ReadoutError(f"the emulator is process {qemu}, not the container's init's one child {emulators}")
        state = await close_window(stub, state, qemu, freeze=pause, thaw=unpause)
        await stub.close()
        stub = None
        accepted = frozenset(await asyncio.to_thread(sockets, qemu)) - before
        fds = await asyncio.to_thread(guest_fds, qemu, accepted)
        summary = await asyncio.to_thread(write_plan, state, qemu, checkpoint_dir, mount=MOUNT,
                                          status=f"{MOUNT}/{STATUS}", fds=fds, masks_before=masks_before)
    except (ReadoutError, GdbRemoteError, GuestPlanRefused, EngineError, OSError) as exc:
        if stub is not None:
            await stub.close()
        if paused:
            try:
                await engine.unpause(cid)
            except EngineError as again:
                log.error("the container read out in part stays paused", error=str(again))
        raise ReadoutError(str(exc)) from exc
    log.info("read out of the emulator", threads=summary.threads, vmas=summary.vmas, page_bytes=summary.page_bytes,
             notes=list(summary.notes))
    return summary
