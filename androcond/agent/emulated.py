"""The device's side of an emulated restore. The daemon made the target container's entry point the device's
qemu-x86_64 running androcond's restorer on its plan; here the migration's files are mounted at MOUNT, the
container is started as any container, and the restorer's word is read from a FIFO: "ok" once it has rebuilt
the process and jumps into it, else what failed. Then a short probation: a process that dies at once (an
instruction the emulator lacks) is a failed restore, so the container goes back to the source.

The way home from emulation runs the same restorer natively. Where the engine has androcond's runtime, the
container keeps its own configuration and the runtime starts it this once with the restorer, as a mark left
under RUNTIME_MARKS says."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..aio import CommandTimeout, run
from ..engine import Engine, EngineError
from ..logging import get_logger
from ..protocol.emulation import (
    EMULATOR,
    MOUNT,
    RESTORER,
    ROOTFS_RESTORER,
    STATUS,
    STUB_MOUNT,
    STUB_SOCKET,
    once_argv,
)
from .errors import RestoreError

log = get_logger(__name__)
# The restorer reads every dumped page through the emulator (and, on the bed, through a second, system
# emulator): a 64 MB heap takes seconds there, not milliseconds.
STATUS_DEADLINE_S = 300.0
# A process that picked CPU features the emulator lacks dies at its first such instruction, within moments of
# the resume; this long it must keep running before the device says it runs.
PROBATION_S = 2.0
STATUS_LINE_LIMIT = 4096
STUB_TMPFS = "mode=1777,size=64k"  # the container's user makes the socket; nothing else goes there
# Where androcond's runtime (agent/runtime/androcond-runc, which names the same directory) looks, at `create`,
# for how to start a container once with the restorer: a file named by the container's id, taken as it is read.
RUNTIME_MARKS = Path("/run/androcond-runc")


def mounted(config: dict[str, Any], images_dir: Path, *, stub: bool = False) -> dict[str, Any]:
    """The create body with the migration's directory mounted read-only where the restorer looks, and with
    `stub` a tmpfs of the container's own where qemu's gdb stub makes its socket: writable whatever the
    container's user and root filesystem, gone with the container (the images directory is removed once the
    restorer has read it)."""
    host = dict(config.get("HostConfig") or {})
    host["Binds"] = [*(host.get("Binds") or []), f"{images_dir}:{MOUNT}:ro"]
    if stub:
        host["Tmpfs"] = {**(host.get("Tmpfs") or {}), STUB_MOUNT: STUB_TMPFS}
    return {**config, "HostConfig": host}


def stub_socket(container_pid: int) -> Path:
    """Where the agent reaches the gdb stub of an emulated container, through the root of one of its
    processes (the engine's State.Pid: its init, in the container's mount namespace)."""
    return Path(f"/proc/{container_pid}/root{STUB_MOUNT}/{STUB_SOCKET}")


def place_emulator(emulator: Path, images_dir: Path) -> None:
    """The image has no qemu for this device: the container runs the device's own, from the mounted directory
    (a hard link where it can be, else a copy; made while the source still runs)."""
    placed = images_dir / EMULATOR
    placed.unlink(missing_ok=True)
    try:
        os.link(emulator, placed)
    except OSError:
        shutil.copy2(emulator, placed)


def _take(mark: Path) -> bool:
    """Remove the mark if the runtime did not; whether it was still there."""
    try:
        mark.unlink()
    except FileNotFoundError:
        return False
    return True


def open_to_all(images_dir: Path) -> None:
    """The container's user may not be root: the restorer must read the plan and the pages, and write the
    status FIFO (made here, before the start). The emulator is left as it is (it may be a link to the
    device's own)."""
    images_dir.chmod(0o755)
    for entry in images_dir.iterdir():
        if entry.is_file() and not entry.is_symlink() and entry.name != EMULATOR:
            entry.chmod(0o755 if entry.name == RESTORER else 0o644)
    fifo = images_dir / STATUS
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()
    os.mkfifo(fifo)
    fifo.chmod(0o666)  # whatever the umask


@contextlib.contextmanager
def _status_fifo(path: Path) -> Iterator[int]:
    # Our own write end keeps the FIFO from reading end-of-file before the restorer has opened it.
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        yield reader
    finally:
        os.close(writer)
        os.close(reader)


async def _read_status(fd: int) -> str:
    loop = asyncio.get_running_loop()
    ready: asyncio.Event = asyncio.Event()
    loop.add_reader(fd, ready.set)
    received = b""
    try:
        while b"\n" not in received and len(received) < STATUS_LINE_LIMIT:
            await ready.wait()
            ready.clear()
            try:
                received += os.read(fd, STATUS_LINE_LIMIT)
            except BlockingIOError:
                continue
    finally:
        loop.remove_reader(fd)
    return received.split(b"\n", 1)[0].decode(errors="replace").strip()


async def _exited(engine: Engine, container_id: str) -> None:
    """Returns once the container has stopped. The engine's wait call ends with its own timeout: ask again."""
    while True:
        try:
            await engine.wait_stopped(container_id)
            return
        except EngineError as exc:
            if exc.status == 404:
                return
            log.debug("waiting for the emulated container again", error=str(exc))


async def _why_stopped(engine: Engine, container_id: str) -> str:
    try:
        state = (await engine.inspect_container(container_id))["State"]
        logs = (await engine.container_logs(container_id)).strip().splitlines()[-3:]
    except EngineError as exc:
        return f"(its state could not be read: {exc})"
    said = f"; its last output: {' | '.join(logs)}" if logs else ""
    return f"exit code {state.get('ExitCode')}{said}"


def _leave_mark(mark: Path, images_dir: Path) -> None:
    mark.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = mark.with_name(f".{mark.name}.{os.getpid()}")
    staged.write_text(json.dumps({"args": once_argv(), "mount": {"source": str(images_dir), "destination": MOUNT}}))
    os.replace(staged, mark)  # whole or not at all: the runtime may read it any moment after the start


def place_restorer(images_dir: Path, upper_dir: Path) -> None:
    """The restorer's copy in the container's writable layer, at ROOTFS_RESTORER (written before the start,
    while the layer is not mounted)."""
    placed = upper_dir / ROOTFS_RESTORER.lstrip("/")
    shutil.copyfile(images_dir / RESTORER, placed)
    placed.chmod(0o755)


async def let_go(engine: Engine, container_id: str, *, timeout_s: float = 30.0) -> str:
    """Once the restorer has become the process: MOUNT unmounted in the container (nothing of it is open or
    mapped any more) and the restorer's copy removed. What could not be done, '' when all was; the container
    runs either way, but with MOUNT still there it cannot be checkpointed (the source refuses such a move)."""
    try:
        pid = int((await engine.inspect_container(container_id))["State"].get("Pid") or 0)
    except EngineError as exc:
        return f"cannot find its process: {exc}"
    problems = []
    try:
        done = await run(["nsenter", f"--target={pid}", "--mount", "umount", MOUNT], timeout_s=timeout_s)
        if done.returncode != 0:
            problems.append(f"umount {MOUNT}: {done.text()}")
    except (OSError, CommandTimeout) as exc:
        problems.append(f"umount {MOUNT}: {exc}")
    try:  # through its root: the layer is mounted, and a file under an overlay is removed through it
        await asyncio.to_thread(os.unlink, f"/proc/{pid}/root{ROOTFS_RESTORER}")
    except OSError as exc:
        problems.append(f"removing {ROOTFS_RESTORER}: {exc}")
    return "; ".join(problems)


async def start(engine: Engine, container_id: str, images_dir: Path, *,
                deadline_s: float = STATUS_DEADLINE_S, probation_s: float = PROBATION_S,
                native: bool = False, once: Path | None = None) -> float:
    """Start the emulated container (`native`: the restorer runs natively, the way home from emulation);
    returns the seconds until the restorer said "ok". Raises RestoreError when it did not, or when the
    container stopped within the probation. `once`: the container has its own configuration, and androcond's
    runtime starts it this once with the restorer, as the mark left there (RUNTIME_MARKS/<id>) says."""
    how = "natively" if native else "under emulation"
    await asyncio.to_thread(open_to_all, images_dir)
    loop = asyncio.get_running_loop()
    with _status_fifo(images_dir / STATUS) as fd:
        started = loop.time()
        try:
            if once is not None:
                await asyncio.to_thread(_leave_mark, once, images_dir)
            await engine.start_container(container_id)
        except EngineError as exc:
            raise RestoreError(f"the device engine did not start the emulated container: {exc}") from exc
        except OSError as exc:
            raise RestoreError(f"cannot leave androcond's runtime its mark {once}: {exc}") from exc
        finally:
            untaken = once is not None and await asyncio.to_thread(_take, once)
        if untaken:
            # Its own program runs instead of the restorer: no word would come until the deadline.
            raise RestoreError(f"the engine did not start the container through androcond's runtime (its mark "
                               f"{once} was not taken): the restorer did not run")
        exited = asyncio.ensure_future(_exited(engine, container_id))
        status = asyncio.ensure_future(_read_status(fd))
        try:
            async with asyncio.timeout(deadline_s):
                await asyncio.wait({exited, status}, return_when=asyncio.FIRST_COMPLETED)
            if not status.done():
                raise RestoreError(f"the restore {how} stopped before the restorer said anything: "
                                   f"{await _why_stopped(engine, container_id)}")
            word = status.result()
            restored_s = loop.time() - started
            if word != "ok":
                raise RestoreError(f"the restorer failed: {word or '(no word)'}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(probation_s):
                    await asyncio.shield(exited)
            if exited.done():
                cause = "" if native else "; a CPU feature the emulator lacks is the usual cause (docs/emulation.md)"
                raise RestoreError(f"the process stopped right after it was resumed {how} ("
                                   f"{await _why_stopped(engine, container_id)}){cause}")
        except TimeoutError as exc:
            raise RestoreError(f"the restorer said nothing within {deadline_s:.0f} s") from exc
        finally:
            for task in (exited, status):
                task.cancel()
            await asyncio.gather(exited, status, return_exceptions=True)
    log.info(f"resumed {how}", container_id=container_id, restore_s=round(restored_s, 3))
    return restored_s

