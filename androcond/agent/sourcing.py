"""The agent as a migration's source (the way back): the daemon names a container of the device's engine, the
agent reports what preflight needs, freezes it through the engine into a checkpoint, sends the checkpoint, the
writable layer and the named volumes (protocol/tree.py reads them as the daemon reads the host's), and on the
daemon's word either restores it from that checkpoint (the move failed) or removes it (it runs elsewhere).

The flat freeze (`Freeze.lazy`, post-copy back): the container is paused, `runc checkpoint --lazy-pages` dumps
all but its memory, and the paused tasks serve their pages (criu/lazy_dump.py) as Pages frames answering the
daemon's; the dump ends well only on SOURCE_CONFIRM (the target runs it with every page). Any other end — the
session's, a rollback's, this agent's death (its socket resets) — leaves the tasks paused until the daemon's
word: SOURCE_RESTORE unpauses them, SOURCE_REMOVE removes them.

The readout (`Freeze.readout`, home from emulation): an emulated container is read out of its emulator into a
restorer's plan (readout.py) instead of a CRIU checkpoint, and stays paused the same way until the daemon's word.

The agent decides nothing on its own here: a session that ends leaves a frozen container frozen, because only
the daemon knows whether the target already runs it — it settles the move, in this session or a later one.

A part of the agent's session (session.py), kept here: its methods run with the session as `self`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..aio import complete
from ..criu import compat as criu_compat
from ..criu import runc
from ..criu.lazy_dump import LAZY_DUMP, LazyDump, LazyDumpError
from ..criu.leftovers import FLAT_FILE, is_own, mark_flat, place_nonce, remove_extractions
from ..engine import EngineError, restart_policy
from ..logging import get_logger
from ..popcorn import notify as popcorn
from ..protocol import protocol_pb2 as pb
from ..protocol.emulation import RESTORER_MOUNTED, restorer_mounted
from ..protocol.tree import Entry, TreeError, entries, tree_size
from ..protocol.wire import CHUNK, ChannelClosed
from . import readout
from .device import DeviceEngine
from .errors import AgentError, ProtocolViolation, RestoreError
from .outcomes import check_id

log = get_logger(__name__)
READOUT = "readout"  # Frozen.via of an emulated container read out of its emulator (readout.py)


# One freeze or restore of a container at a time in this agent: a daemon that restarted may ask for the
# rollback while the dead one's checkpoint is still under way (the rollback then waits, and sees it stopped).
_busy: dict[str, asyncio.Lock] = {}


def _lock(container_id: str) -> asyncio.Lock:
    return _busy.setdefault(container_id, asyncio.Lock())


# The flat freezes' lazy dumps, by container: whoever ends one first (the confirmation, the end of its session, a
# rollback asked in a later session) takes it out, under the container's lock, and the others find it gone.
_dumps: dict[str, LazyDump] = {}


class SourceRefused(AgentError):
    """The device cannot be the source of this move (no such container, not running, no overlay2 layer…)."""

    code = RestoreError.code


@dataclass
class OutgoingMigration:
    """The container a session is the source of, once the daemon named it."""

    request: pb.SourceOpen
    container_id: str = ""  # empty: the engine has no such container (any more)
    checkpoint_dir: Path | None = None


def _checkpoint_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ProtocolViolation(f"refused checkpoint name {name!r}")
    return name


def _upper_dir(inspect: dict[str, Any]) -> Path:
    driver = inspect.get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir")
    if driver.get("Name") != "overlay2" or not upper:
        raise SourceRefused(f"the device engine's storage driver is {driver.get('Name')!r}, not overlay2")
    return Path(str(upper))


def _volumes(inspect: dict[str, Any]) -> list[tuple[str, Path]]:
    return [(str(m["Name"]), Path(str(m["Source"])))
            for m in inspect.get("Mounts") or [] if m.get("Type") == "volume" and m.get("Name") and m.get("Source")]


def _facts(inspect: dict[str, Any]) -> tuple[int, int, int]:
    """Address bits, INET sockets and bytes on disk of a running container. Blocking."""
    pids = criu_compat.task_tree(int(inspect["State"].get("Pid") or 0))
    disk = sum(tree_size(p) for p in [_upper_dir(inspect), *(source for _n, source in _volumes(inspect))])
    return criu_compat.tasks_va_bits(pids), criu_compat.inet_sockets(pids), disk


def _listing(checkpoint: Path, inspect: dict[str, Any]) -> list[tuple[int, str, Entry]]:
    """What moves, in order: (destination, volume, entry). Blocking."""
    files: list[tuple[int, str, Entry]] = [(pb.CHECKPOINT, "", e) for e in entries(checkpoint)
                                           if e.kind == pb.REGULAR and not is_own(e.name)]
    files += [(pb.ROOTFS, "", e) for e in entries(_upper_dir(inspect))]
    for name, source in _volumes(inspect):
        files += [(pb.VOLUME, name, e) for e in entries(source)]
    return files


def _policy_file(spool: Path | None, migration_id: str) -> Path | None:
    return spool / "sources" / f"{migration_id}.json" if spool is not None else None


def _keep_policy(spool: Path | None, migration_id: str, policy: dict[str, Any]) -> None:
    path = _policy_file(spool, migration_id)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(policy))


def _kept_policy(spool: Path | None, migration_id: str) -> dict[str, Any] | None:
    """The restart policy lifted for this move, taken out of the spool (None when there was none)."""
    path = _policy_file(spool, migration_id)
    if path is None or not path.is_file():
        return None
    policy: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    return policy


class SourcePort(Protocol):
    device: DeviceEngine
    outgoing: OutgoingMigration | None
    _paging: set[asyncio.Task[None]]

    async def send(self, frame: pb.Frame) -> None: ...


class Sourcing:
    outgoing: OutgoingMigration | None

    async def _source_open(self: SourcePort, request: pb.SourceOpen) -> None:
        if self.outgoing is not None:
            raise ProtocolViolation("one source migration per connection")
        check_id(request.migration_id)
        _checkpoint_name(request.checkpoint_name)
        engine = self.device.engine
        outgoing = OutgoingMigration(request)
        try:
            inspect = await engine.inspect_container(request.container)
        except EngineError as exc:
            if exc.status != 404:
                raise
            # Asked again after it was removed (a settled move): nothing to report, nothing to restore.
            self.outgoing = outgoing
            await self.send(pb.Frame(source_facts=pb.SourceFacts()))
            return
        outgoing.container_id = str(inspect["Id"])
        outgoing.checkpoint_dir = (self.device.facts.data_root / "containers" / outgoing.container_id /
                                   "checkpoints" / request.checkpoint_name)
        self.outgoing = outgoing
        facts = pb.SourceFacts(inspect_json=json.dumps(inspect))
        if readout.emulated(inspect):
            facts.emulated = True
            facts.readout_blocker = await asyncio.to_thread(readout.blocker, inspect, self.device.spool_dir)
        if inspect["State"].get("Running"):
            if not facts.emulated and await asyncio.to_thread(restorer_mounted, int(inspect["State"]["Pid"])):
                raise SourceRefused(RESTORER_MOUNTED)
            facts.va_bits, facts.inet_sockets, facts.disk = await asyncio.to_thread(_facts, inspect)
            try:
                stats = await engine.stats(outgoing.container_id)
                facts.memory = int((stats.get("memory_stats") or {}).get("usage") or 0)
            except EngineError as exc:
                log.info("no memory figure from the engine", error=str(exc))
        log.info("source of a migration", migration_id=request.migration_id, container=request.container,
                 running=bool(inspect["State"].get("Running")))
        await self.send(pb.Frame(source_facts=facts))

    def _opened(self: SourcePort) -> OutgoingMigration:
        if self.outgoing is None:
            raise ProtocolViolation("no source migration opened (send source_open first)")
        return self.outgoing

    async def _freeze(self: SourcePort, request: pb.Freeze) -> None:
        outgoing = Sourcing._opened(self)
        if not outgoing.container_id or outgoing.checkpoint_dir is None:
            raise SourceRefused(f"no container {outgoing.request.container!r} on this device")
        engine = self.device.engine
        async with _lock(outgoing.container_id):
            inspect = await engine.inspect_container(outgoing.container_id)
            if not inspect["State"].get("Running"):
                raise SourceRefused(f"container {outgoing.request.container} is not running here")
            await Sourcing._hold_restarts(self, outgoing, inspect)
            await asyncio.to_thread(_configured_oom_scores, inspect)
            started = time.monotonic()
            notes: tuple[str, ...] = ()
            if request.readout:
                via, notes = await _read_out(self.device, outgoing, inspect)
            else:
                via = await (_freeze_flat if request.lazy else _checkpoint)(self.device, outgoing)
            seconds = time.monotonic() - started
        log.info("checkpointed as a source", checkpoint_s=round(seconds, 3), via=via)
        try:
            listing = await asyncio.to_thread(_listing, outgoing.checkpoint_dir, inspect)
        except (TreeError, OSError) as exc:
            raise SourceRefused(f"cannot read what must move: {exc}") from exc
        total = sum(e.size for _d, _v, e in listing)
        await self.send(pb.Frame(frozen=pb.Frozen(file_count=len(listing), total_bytes=total,
                                                  checkpoint_seconds=seconds, via=via, notes=notes)))
        for number, (destination, volume, item) in enumerate(listing, start=1):
            await _send_file(self, number, destination, volume, item)
        log.info("sent what moves", files=len(listing), bytes=total)
        dump = _dumps.get(outgoing.container_id) if via == LAZY_DUMP else None
        if dump is not None:  # its pages go as the daemon asks for them (owned by the session, reaped at its end)
            self._paging.add(asyncio.create_task(_serve_pages(self, dump), name="source-pages"))

    async def _source_pages(self: SourcePort, pages: pb.Pages) -> None:
        """The target's lazy-pages' requests, relayed by the daemon, to the dump's page server."""
        outgoing = Sourcing._opened(self)
        dump = _dumps.get(outgoing.container_id)
        if dump is None:
            raise ProtocolViolation("pages asked of a container no lazy dump holds")
        if pages.codec:
            raise ProtocolViolation("page requests come uncompressed")
        try:
            await dump.feed(pages.data)
        except (ConnectionError, OSError) as exc:
            # Reset: the tasks are back to paused; the target's lazy-pages fails and the daemon rolls back.
            log.warning("the lazy dump took no more requests", error=str(exc))

    async def _end_dump(self: SourcePort) -> None:
        """The session ends: a lazy dump it still holds is reset (its tasks stay paused until the daemon's word)."""
        outgoing = self.outgoing
        if outgoing is not None and outgoing.container_id in _dumps:
            async with _lock(outgoing.container_id):
                await _close_dump(outgoing.container_id)

    async def _cross_prepare(self: SourcePort, request: pb.CrossPrepare) -> None:
        """Across ISAs back: every task must be a Popcorn binary; with `notify` each is told to reach a migration
        point for the target (the same protocol the host runs on the way out), right before the freeze."""
        outgoing = Sourcing._opened(self)
        if not outgoing.container_id:
            raise SourceRefused(f"no container {outgoing.request.container!r} on this device")
        target = request.target_isa
        if target not in popcorn.TARGET_IDS or target == self.device.facts.isa:
            raise SourceRefused(f"cannot prepare a move from {self.device.facts.isa} to {target!r}")
        async with _lock(outgoing.container_id):
            inspect = await self.device.engine.inspect_container(outgoing.container_id)
            if not inspect["State"].get("Running"):
                raise SourceRefused(f"container {outgoing.request.container} is not running here")
            pids = await asyncio.to_thread(criu_compat.task_tree, int(inspect["State"].get("Pid") or 0))
            regsets: list[popcorn.Regset] = []
            try:
                executables = await asyncio.to_thread(_popcorn_executables, pids)
                if request.notify:
                    started = time.monotonic()
                    regsets = await popcorn.notify(pids, target)
                    log.info("notified for the target", target=target, tasks=len(pids),
                             seconds=round(time.monotonic() - started, 3))
            except popcorn.PopcornError as exc:
                raise SourceRefused(str(exc)) from exc
        await self.send(pb.Frame(cross_ready=pb.CrossReady(
            executables=executables, regsets=[pb.Regset(pid=r.pid, regs=r.regs, tls=r.tls) for r in regsets])))

    async def _hold_restarts(self: SourcePort, outgoing: OutgoingMigration, inspect: dict[str, Any]) -> None:
        """Lift the restart policy for the move (`engine.restart_policy` says why), kept in the spool first (a
        rollback in a later session puts it back); it goes home in the config."""
        policy = restart_policy(inspect)
        if policy is None:
            return
        await asyncio.to_thread(_keep_policy, self.device.spool_dir, outgoing.request.migration_id, policy)
        try:
            await self.device.engine.lift_restart_policy(outgoing.container_id)
        except EngineError as exc:
            raise SourceRefused(f"cannot lift the container's restart policy for the move: {exc}") from exc

    async def _source_end(self: SourcePort, action: int) -> None:
        outgoing = Sourcing._opened(self)
        cid = outgoing.container_id
        if action == pb.SOURCE_CONFIRM:
            async with _lock(cid):
                await _confirm(self.device, cid)
            await self.send(pb.Frame(source_ended=pb.SourceEnded(present=True, container_id=cid)))
        elif action == pb.SOURCE_RESTORE:
            if not cid:
                raise SourceRefused(f"no container {outgoing.request.container!r} to restore on this device")
            async with _lock(cid):
                running = await _restore(self.device, outgoing)
            await self.send(pb.Frame(source_ended=pb.SourceEnded(running=running, present=True, container_id=cid)))
        elif action == pb.SOURCE_REMOVE:
            if cid:
                async with _lock(cid):
                    await _close_dump(cid)  # unconfirmed: the tasks go with the container, paused
                    stopping = _stopping.pop(cid, None)
                    if stopping is not None:
                        await stopping
                    await self.device.discard(cid)  # its checkpoint goes with it
                    await asyncio.to_thread(readout.forget, self.device.spool_dir, cid)
                log.info("removed: it runs at the target", container_id=cid)
            await asyncio.to_thread(_kept_policy, self.device.spool_dir, outgoing.request.migration_id)
            await self.send(pb.Frame(source_ended=pb.SourceEnded(container_id=cid)))
        else:
            raise ProtocolViolation(f"unknown source action {action}")


def _configured_oom_scores(inspect: dict[str, Any]) -> None:
    """Raise each task's oom_score_adj to what the container's configuration asks (HostConfig.OomScoreAdj, 0 by
    default) before the freeze. A container restored by this engine inherits its shim's own score (-998 under
    a systemd that starts containerd at -999), and the target's CRIU cannot lower a score without
    CAP_SYS_RESOURCE ("Write -998 to /proc/self/oom_score_adj failed"). Blocking."""
    wanted = int((inspect.get("HostConfig") or {}).get("OomScoreAdj") or 0)
    for pid in criu_compat.task_tree(int(inspect["State"].get("Pid") or 0)):
        path = Path(f"/proc/{pid}/oom_score_adj")
        try:
            if int(path.read_text()) < wanted:
                path.write_text(str(wanted))
        except (OSError, ValueError) as exc:  # a task that exits meanwhile is not dumped either
            log.info("could not set a task's oom_score_adj", pid=pid, error=str(exc))


def _popcorn_executables(pids: list[int]) -> list[str]:
    """The tasks' executables as they see them, each once; PopcornError names every task that is not a Popcorn
    binary (so nothing is notified unless every task can be). Blocking."""
    names: set[str] = set()
    problems: list[str] = []
    for pid in pids:
        try:
            popcorn.find_variable(pid)
            names.add(os.readlink(f"/proc/{pid}/exe"))
        except (popcorn.PopcornError, OSError) as exc:
            problems.append(str(exc))
    if problems:
        raise popcorn.PopcornError("; ".join(problems))
    return sorted(names)


def _runc_root(exec_root: Path | None, container_id: str) -> Path | None:
    """Where runc keeps the container's state (<exec-root>/runtime-<runtime>/<namespace>/<id>), if found."""
    if exec_root is None:
        return None
    found = sorted(exec_root.glob(f"runtime-*/*/{container_id}/state.json"))
    return found[0].parent.parent if found else None


async def _checkpoint(device: DeviceEngine, outgoing: OutgoingMigration) -> str:
    """Freeze it into the engine's checkpoint directory: through runc straight there where its state is found
    (the engine's own path copies the images through containerd: 5.2 s against 0.5 s for 256 MB on the bed),
    else through the engine. How it was done."""
    cid, name = outgoing.container_id, outgoing.request.checkpoint_name
    assert outgoing.checkpoint_dir is not None
    root = await asyncio.to_thread(_runc_root, device.exec_root, cid)
    if root is not None and await asyncio.to_thread(runc.usable, root, cid):  # its restart policy is lifted
        try:
            await complete(runc.checkpoint(root, cid, outgoing.checkpoint_dir))
        except runc.RuncError as exc:
            raise SourceRefused(f"the device could not checkpoint the container: {exc}") from exc
        # The engine learns of the stop a moment later; a rollback must not find it "running" still.
        _stopping[cid] = asyncio.create_task(_until_stopped(device, cid), name=f"stopping-{cid[:12]}")
        return "runc"
    try:
        await complete(device.engine.create_checkpoint(cid, name))
    except EngineError as exc:
        raise SourceRefused(f"the device engine could not checkpoint the container: {exc}") from exc
    return "engine"


async def _freeze_flat(device: DeviceEngine, outgoing: OutgoingMigration) -> str:
    """Pause it, then a lazy dump into the engine's checkpoint directory, marked as ours to unpause. A dump that
    does not start leaves nothing frozen: the tasks, back as they were, are unpaused here."""
    cid = outgoing.container_id
    assert outgoing.checkpoint_dir is not None
    root = await asyncio.to_thread(_runc_root, device.exec_root, cid)
    if root is None or not await asyncio.to_thread(runc.usable, root, cid):
        raise SourceRefused("the flat freeze needs the container's runc state, which this agent does not find "
                            "(its engine's exec-root: [agent] exec_root)")
    # Marked before the pause: an agent killed at any point of the freeze leaves the mark, and the daemon's
    # word then unpauses (_restore).
    await asyncio.to_thread(mark_flat, outgoing.checkpoint_dir)
    try:
        await device.engine.pause(cid)
    except EngineError as exc:
        await asyncio.to_thread(shutil.rmtree, outgoing.checkpoint_dir, True)  # a pause not ours (its user's)
        raise SourceRefused(f"the device could not pause the container: {exc}") from exc
    try:
        dump = await LazyDump.start(root, cid, outgoing.checkpoint_dir)
    except (LazyDumpError, OSError) as exc:
        await device.engine.unpause(cid)
        raise SourceRefused(f"the device could not freeze the container flat: {exc}") from exc
    _dumps[cid] = dump
    return LAZY_DUMP


async def _read_out(device: DeviceEngine, outgoing: OutgoingMigration,
                    inspect: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """An emulated container: read out of its emulator into the checkpoint directory, left paused (marked as
    a flat freeze is: the daemon's word unpauses it). A readout that fails leaves it running."""
    assert outgoing.checkpoint_dir is not None
    why_not = await asyncio.to_thread(readout.blocker, inspect, device.spool_dir) if readout.emulated(inspect) \
        else "it does not run under androcond's emulator here"
    if why_not or device.spool_dir is None:
        raise SourceRefused(f"container {outgoing.request.container} cannot be read out: {why_not}")
    try:
        summary = await readout.freeze(device.engine, inspect, outgoing.checkpoint_dir, device.spool_dir)
    except readout.ReadoutError as exc:
        await asyncio.to_thread(shutil.rmtree, outgoing.checkpoint_dir, True)
        raise SourceRefused(f"the emulated container could not be read out: {exc}") from exc
    return READOUT, summary.notes


async def _serve_pages(session: SourcePort, dump: LazyDump) -> None:
    """The page server's replies to the daemon. A send that fails means the daemon is gone: the session's end
    resets the dump. A page server that fails (its CRIU gone: the tasks stay frozen) is reported at once, so
    that the daemon rolls back instead of waiting for pages until its paging deadline."""
    try:
        async for data in dump.replies():
            try:
                await session.send(pb.Frame(pages=pb.Pages(data=data)))
            except (ChannelClosed, ConnectionError, OSError):
                return
    except (ConnectionError, OSError) as exc:
        log.error("the lazy dump stopped serving pages", error=str(exc))
        with contextlib.suppress(ChannelClosed, ConnectionError, OSError):
            await session.send(pb.Frame(error=pb.Error(message=f"the device's lazy dump stopped serving pages: {exc}",
                                                       phase="paging", code=pb.ERROR_RESTORE)))


async def _close_dump(container_id: str) -> None:
    """End the container's lazy dump, if one holds it (the caller holds the container's lock): reset unless
    confirmed, so CRIU lets the tasks go back to paused."""
    dump = _dumps.pop(container_id, None)
    if dump is not None:
        await dump.close()


async def _confirm(device: DeviceEngine, container_id: str) -> None:
    """The target runs it with every page: the dump ends well and its tasks go (the engine sees it stop)."""
    dump = _dumps.pop(container_id, None)
    if dump is None:
        raise SourceRefused("no flat freeze holds the container (its dump ended before the confirmation)")
    try:
        await dump.confirm()
    except (LazyDumpError, OSError, TimeoutError) as exc:
        raise SourceRefused(f"the lazy dump did not end well: {exc}") from exc
    finally:
        await dump.close()
    _stopping[container_id] = asyncio.create_task(_until_stopped(device, container_id),
                                                  name=f"stopping-{container_id[:12]}")


# After a freeze through runc: until the engine has seen the container stop (awaited before a restore).
_stopping: dict[str, asyncio.Task[None]] = {}
STOP_SEEN_S = 30.0


async def _until_stopped(device: DeviceEngine, container_id: str) -> None:
    try:
        async with asyncio.timeout(STOP_SEEN_S):
            await device.engine.wait_stopped(container_id)
    except (EngineError, TimeoutError) as exc:
        log.warning("the engine did not report the checkpointed container stopped", error=str(exc))


async def _restore(device: DeviceEngine, outgoing: OutgoingMigration) -> bool:
    """Run it again from its checkpoint unless it runs, then give it its restart policy back; whether it runs."""
    cid = outgoing.container_id
    await _close_dump(cid)
    stopping = _stopping.pop(cid, None)
    if stopping is not None:
        await stopping
    checkpoint = outgoing.checkpoint_dir
    if checkpoint is not None and await asyncio.to_thread((checkpoint / FLAT_FILE).exists):
        # The flat freeze or a readout: its paused tasks are the container (no CRIU dump to start it from).
        state = (await device.engine.inspect_container(cid))["State"]
        if state.get("Paused"):
            await device.engine.unpause(cid)
        elif not state.get("Running"):
            raise RestoreError("the container's tasks are gone, and its flat freeze or readout kept no dump to "
                               "restore from")
    elif not await device.is_running(cid):
        # containerd never removes its extraction of a checkpoint (criu/leftovers.py): marked, to be found.
        nonce = await asyncio.to_thread(place_nonce, checkpoint) if checkpoint and checkpoint.is_dir() else ""
        try:
            await device.engine.start_container(cid, checkpoint=outgoing.request.checkpoint_name)
        except EngineError as exc:
            raise RestoreError(f"the device engine could not restore the container: {exc}") from exc
        finally:
            if nonce:
                await asyncio.to_thread(remove_extractions, nonce)
    running = await device.is_running(cid)
    if running:
        if outgoing.checkpoint_dir is not None:
            await asyncio.to_thread(shutil.rmtree, outgoing.checkpoint_dir, True)
        kept = await asyncio.to_thread(_kept_policy, device.spool_dir, outgoing.request.migration_id)
        if kept:
            await device.apply_restart_policy(cid, kept)
    log.info("restored at the source", container_id=cid, running=running)
    return running


async def _send_file(session: SourcePort, stream_id: int, destination: int, volume: str, item: Entry) -> None:
    """One file as the protocol carries it: its start, its data in CHUNK frames (read in a worker thread; the
    channel's drain is the backpressure), its SHA-256."""
    await session.send(pb.Frame(file_start=item.start(destination, stream_id, volume)))
    digest = hashlib.sha256()
    if item.kind == pb.REGULAR:
        fd = await asyncio.to_thread(os.open, item.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            remaining = item.size
            while remaining > 0:
                chunk = await complete(asyncio.to_thread(os.read, fd, min(CHUNK, remaining)))
                if not chunk:
                    raise SourceRefused(f"{item.path} shrank while being sent")
                remaining -= len(chunk)
                await asyncio.to_thread(digest.update, chunk)
                await session.send(pb.Frame(file_data=pb.FileData(stream_id=stream_id, data=chunk)))
        finally:
            os.close(fd)
    await session.send(pb.Frame(file_end=pb.FileEnd(stream_id=stream_id, sha256=digest.digest())))
