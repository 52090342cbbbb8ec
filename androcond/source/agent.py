"""A device's agent as a migration's source (the way back): the container runs in the device's engine; the
agent reports its facts, freezes it into a checkpoint there and sends the checkpoint, writable layer and volumes,
which go on to the target as they come (relay.py) when nothing must be recoded, else land in the daemon's
workspace for the migration (checked against the agent's SHA-256 of each) and go on from there like the host's
own; and on the daemon's word the agent restores it (the rollback) or removes it. Each of those is one link: a
daemon that restarts settles the move with a source made afresh — but for a relay, whose link stays open until
its last file has passed, and for the flat freeze (post-copy back, device_pages.py), whose link stays open from
the freeze until the target has every page: its end, however it comes, leaves the device's tasks paused until
the daemon's word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..agent import files as received
from ..agent.errors import AgentError
from ..config import DeviceSettings, TimeoutSettings
from ..criu.lazy_dump import LAZY_DUMP
from ..engine import Engine, EngineError
from ..link.layer import tree_files
from ..link.payload import OutgoingFile
from ..link.ssh import AgentRefused, TransportError
from ..logging import get_logger
from ..migration import container_config
from ..migration.container_config import TargetPlan
from ..migration.errors import Rejected
from ..migration.journal import Journal, MigrationRecord
from ..migration.plan import Frozen, SourceFacts
from ..popcorn.notify import Regset
from ..protocol import protocol_pb2 as pb
from ..protocol.wire import body
from ..recoder import check_executable
from .device_pages import DevicePages
from .relay import Relay, check_volume
from .rootfs import RootfsError, container_root

log = get_logger(__name__)
EMULATED_ISA = "x86_64"  # what the device's emulator runs
# The directories of the workspace the agent's files land in, by destination.
CHECKPOINT, ROOTFS, VOLUMES = "checkpoint", "rootfs", "volumes"


class SourceLink(Protocol):
    """A link to an agent, as the source of a migration."""

    hello: pb.AgentHello

    async def source_open(self, request: pb.SourceOpen) -> pb.SourceFacts: ...

    async def cross_prepare(self, target_isa: str, *, notify: bool, seconds: float) -> pb.CrossReady: ...

    async def freeze(self, seconds: float, *, lazy: bool = False, readout: bool = False) -> pb.Frozen: ...

    async def incoming(self) -> pb.Frame: ...

    async def send_pages(self, data: bytes) -> None: ...

    def source_pages(self) -> AsyncIterator[bytes]: ...

    async def source_end(self, action: int, seconds: float) -> pb.SourceEnded: ...


SourceLinks = Callable[[DeviceSettings], AbstractAsyncContextManager[SourceLink]]


class SourceLost(EngineError):
    """The device did not run the container again from its checkpoint."""


@dataclass(frozen=True)
class _Seen:
    inspect: dict[str, Any]
    facts: pb.SourceFacts
    hello: pb.AgentHello


class AgentSource:
    def __init__(self, links: SourceLinks, device: DeviceSettings, record: MigrationRecord, journal: Journal, *,
                 workspace: Path, timeouts: TimeoutSettings, home: Engine) -> None:
        self._links = links
        self._home = home  # the host's engine: across ISAs, the recode reads the binaries of its image
        self.device = device
        self.record = record
        self._journal = journal
        self.workspace = workspace  # where the agent's files land (removed with the migration's workspace)
        self._timeouts = timeouts
        self._seen: _Seen | None = None
        # The link held after the freeze: a flat freeze's until its pages are served, a relay's until its files are.
        self._held: contextlib.AsyncExitStack | None = None

    def _open(self) -> pb.SourceOpen:
        return pb.SourceOpen(migration_id=self.record.id, container=self.record.container_name,
                             checkpoint_name=self.record.checkpoint_name)

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[tuple[SourceLink, pb.SourceFacts]]:
        try:
            async with self._links(self.device) as link:
                yield link, await link.source_open(self._open())
        except AgentRefused as exc:
            if exc.phase in ("freeze", "source"):
                raise Rejected(f"device {self.device.name} cannot be the source: {exc}") from exc
            raise

    # --- what it is ------------------------------------------------------------------------------------
    async def inspect(self) -> dict[str, Any]:
        try:
            async with self._session() as (link, facts):
                hello = link.hello
        except TransportError as exc:
            raise Rejected(f"device {self.device.name} is not reachable: {exc}") from exc
        if not facts.inspect_json:
            raise Rejected(f"device {self.device.name} has no container {self.record.container_name}")
        inspect: dict[str, Any] = json.loads(facts.inspect_json)
        if not inspect["State"].get("Running"):
            raise Rejected(f"the container is not running on {self.device.name} "
                           f"(status {inspect['State'].get('Status')})")
        self._seen = _Seen(inspect, facts, hello)
        return inspect

    def _facts_seen(self) -> _Seen:
        assert self._seen is not None, "inspect() first"
        return self._seen

    async def facts(self, inspect: dict[str, Any]) -> SourceFacts:
        seen = self._facts_seen()
        f, hello = seen.facts, seen.hello
        # An emulated container's program is x86_64 whatever the device is.
        isa = EMULATED_ISA if f.emulated else hello.isa
        return SourceFacts(pids=(), va_bits=f.va_bits, isa=isa, criu_options=tuple(hello.criu_runc_options),
                           inet_sockets=f.inet_sockets, cgroup_v2=hello.cgroup2,
                           absent_paths=frozenset(hello.absent_masked_paths),
                           page_server_blocker="" if hello.serves_pages else
                           f"device {self.device.name}'s agent cannot serve pages (an older agent: androcond "
                           "devices setup; or no runc states where its [agent] exec_root says)",
                           memory=f.memory, disk=f.disk, lazy_needs_flat=True, emulated=f.emulated,
                           readout_blocker=f.readout_blocker)

    async def target_plan(self, inspect: dict[str, Any], device: DeviceSettings) -> TargetPlan:
        """The configuration the container had at home, as the move that took it out recorded it; else (a move
        made before androcond recorded it) the device's, with what it changed on the way said."""
        home = await self._journal.home_config(self.record.container_name)
        if home:
            return TargetPlan(home)
        try:
            plan = container_config.plan(inspect, allow_privileged=device.allow_privileged)
        except container_config.ConfigRefused as exc:
            raise Rejected(f"the container's configuration cannot move: {exc}") from exc
        plan.adjusted["(way back)"] = {"why": "the configuration at home was not recorded: the device's is used"}
        return plan

    async def sockets_blocker(self, count: int) -> str:
        if self._facts_seen().hello.criu_dumps_sockets:
            return ""
        return f"the container holds {count} network socket(s), and device {self.device.name}'s CRIU cannot " \
               "dump them on its kernel"

    # --- across ISAs (Popcorn binaries, recoded here) ----------------------------------------------------------
    async def popcorn_executables(self, pids: tuple[int, ...], target_isa: str) -> tuple[str, ...]:
        """The device's agent checks that every task runs a Popcorn binary (it knows the tasks' pids)."""
        try:
            async with self._session() as (link, _facts):
                ready = await link.cross_prepare(target_isa, notify=False, seconds=self._timeouts.preflight)
        except (Rejected, AgentRefused) as exc:
            raise Rejected(f"cannot move from device {self.device.name} to {target_isa}: {_reason(exc)}") from exc
        # The recode reads both variants of each binary in the host's image: checked now, before the freeze.
        isa = self._facts_seen().hello.isa
        async with self.mounted_root(self._facts_seen().inspect) as root:
            problems = [p for name in ready.executables
                        for p in await asyncio.to_thread(check_executable, root, name, isa, target_isa)]
        if problems:
            raise Rejected(f"cannot move from device {self.device.name} to {target_isa}: the host's image "
                           f"{self.image_name(self._facts_seen().inspect)}: {'; '.join(map(str, problems))}")
        return tuple(ready.executables)

    async def notify(self, pids: tuple[int, ...], target_isa: str) -> tuple[Regset, ...]:
        """The Popcorn protocol, run by the agent on the device's tasks."""
        try:
            async with self._session() as (link, _facts):
                ready = await link.cross_prepare(target_isa, notify=True, seconds=self._timeouts.checkpoint)
                return tuple(Regset(r.pid, r.regs, r.tls) for r in ready.regsets)
        except (Rejected, AgentRefused) as exc:
            raise Rejected(f"the container did not reach a migration point on device {self.device.name}: "
                           f"{_reason(exc)}") from exc

    async def emulation_blockers(self, pids: tuple[int, ...],
                                 emulator_version: str) -> tuple[list[str], list[str]]:
        raise Rejected("a device cannot move a container to the host under emulation (the way back recodes "
                       "Popcorn binaries only)")

    @asynccontextmanager
    async def mounted_root(self, inspect: dict[str, Any]) -> AsyncIterator[Path]:
        """The host's image of the container, mounted read-only: the recode reads both variants of each binary
        there, and `<bin>_x86-64` goes back to `<bin>` in the writable layer from it."""
        image = self.image_name(inspect)
        try:
            image_inspect = await self._home.inspect_image(image)
        except EngineError as exc:
            raise Rejected(f"the host lacks the image {image}: {exc}") from exc
        try:
            async with container_root(image_inspect) as root:
                yield root
        except RootfsError as exc:
            raise Rejected(f"cannot read the host's image {image}: {exc}") from exc

    def image_name(self, inspect: dict[str, Any]) -> str:
        return str(inspect["Config"]["Image"])

    async def save_image(self, image: str) -> AsyncIterator[bytes]:
        raise TransportError(f"the host lacks the image {image}, and bringing an image back from a device is not "
                             "built: pull or load it on the host, then move the container again")
        yield b""  # pragma: no cover - makes this an async generator

    # --- the freeze --------------------------------------------------------------------------------------
    async def freeze(self, inspect: dict[str, Any], *, flat: bool = False, relay: bool = False,
                     readout: bool = False) -> Frozen:
        """Frozen on the device. With `relay` (and not `flat`) its link is held open and its files go on to the
        target as the stream phase reads them (Frozen.relayed); else they land in the workspace before this
        returns (the recode and the stream read them there). `flat`: a lazy dump, whose link is held open for
        its pages (Frozen.pages). `readout`: an emulated container read out of its emulator (its files are a
        restorer's plan and its pages), left paused like a flat freeze's."""
        relaying = relay and not flat
        if not relaying:
            await asyncio.to_thread(shutil.rmtree, self.workspace, True)
            await asyncio.to_thread(self.workspace.mkdir, parents=True)
        async with contextlib.AsyncExitStack() as stack:
            link, _facts = await stack.enter_async_context(self._session())
            at = time.monotonic()
            frozen = await link.freeze(self._timeouts.checkpoint, lazy=flat, readout=readout)
            log.info("checkpointed on the device", seconds=round(frozen.checkpoint_seconds, 3),
                     files=frozen.file_count, bytes=frozen.total_bytes, via=frozen.via)
            notes = tuple(frozen.notes)
            if relaying:
                self._held = stack.pop_all()  # released once the last file has passed, or by the rollback
                relayed = Relay(link, frozen.file_count, release=self._release)
                return Frozen(self.workspace / CHECKPOINT, at, frozen.via or "engine",
                              steps={"device_checkpoint_s": frozen.checkpoint_seconds}, relayed=relayed.files(),
                              notes=notes)
            pulling = time.monotonic()
            try:
                await _receive(link, frozen.file_count, self.workspace)
            except (AgentError, OSError) as exc:
                raise TransportError(f"what the device sent could not be stored: {exc}") from exc
            pulled_s = time.monotonic() - pulling
            pages: DevicePages | None = None
            if frozen.via == LAZY_DUMP:  # from here the link is ours until the pages are served (or not)
                self._held = stack.pop_all()
                pages = DevicePages(link, self._facts_seen().hello.criu_version, confirm_s=self._timeouts.commit,
                                    release=self._release)
        log.info("the device's files are here", seconds=round(pulled_s, 3),
                 mb_per_s=round(frozen.total_bytes / 2**20 / max(pulled_s, 1e-6), 1))
        return Frozen(self.workspace / CHECKPOINT, at, frozen.via or "engine",
                      steps={"device_checkpoint_s": frozen.checkpoint_seconds, "pull_s": pulled_s}, pages=pages,
                      notes=notes)

    async def _release(self) -> None:
        """Close the link held after the freeze if it still is: an unconfirmed flat freeze's dump is reset on the
        device, and its tasks stay paused until the daemon's word; a relay ends where it is."""
        held, self._held = self._held, None
        if held is not None:
            await held.aclose()

    def payload(self, inspect: dict[str, Any]) -> list[OutgoingFile]:
        """The writable layer and the volumes, as they landed here. Blocking."""
        files: list[OutgoingFile] = []
        rootfs, volumes = self.workspace / ROOTFS, self.workspace / VOLUMES
        if rootfs.is_dir():
            files += tree_files(rootfs, pb.ROOTFS)
        if volumes.is_dir():
            for volume in sorted(volumes.iterdir()):
                files += tree_files(volume, pb.VOLUME, volume=volume.name)
        return files

    # --- after: exactly once -----------------------------------------------------------------------------
    async def stopped(self) -> None:
        """The device's engine checkpoint returns once the container stopped."""

    async def forget_stopping(self) -> None:
        """Nothing waits on the device's engine here; a flat freeze's link still held goes."""
        await self._release()

    async def restore(self) -> None:
        """Run it again on the device from its checkpoint (a no-op when it runs), or unpause a flat freeze's
        tasks. The device unreachable raises: the migration stays unresolved and the resolver asks again."""
        await self._release()
        async with self._session() as (link, _facts):
            try:
                ended = await link.source_end(pb.SOURCE_RESTORE, self._timeouts.commit)
            except AgentRefused as exc:
                raise SourceLost(f"device {self.device.name}: {exc}") from exc
        if not ended.running:
            raise SourceLost(f"device {self.device.name} did not run the container again")

    async def remove(self) -> None:
        await self._release()
        async with self._session() as (link, _facts):
            await link.source_end(pb.SOURCE_REMOVE, self._timeouts.commit)

    async def clean_after_rollback(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.workspace, True)


def _reason(exc: Exception) -> str:
    return str(exc.__cause__ if isinstance(exc, Rejected) and exc.__cause__ is not None else exc)


def _root_for(workspace: Path, start: pb.FileStart) -> Path:
    if start.destination == pb.CHECKPOINT:
        root = workspace / CHECKPOINT
    elif start.destination == pb.ROOTFS:
        root = workspace / ROOTFS
    elif start.destination == pb.VOLUME:
        root = workspace / VOLUMES / check_volume(start.volume)
    else:
        raise TransportError(f"the device sent a file for destination {start.destination}")
    root.mkdir(parents=True, exist_ok=True)
    return root


async def _receive(link: SourceLink, count: int, workspace: Path) -> None:
    """`count` files as the agent sends them (start, data, end), each made beneath its root in the workspace
    and checked against its SHA-256 (agent/files.py does the work, in worker threads)."""
    for _ in range(count):
        frame = await link.incoming()
        if body(frame) != "file_start":
            raise TransportError(f"expected file_start from the device, got {body(frame)}")
        start = frame.file_start
        root = await asyncio.to_thread(_root_for, workspace, start)
        current = received.OpenFile(start)
        written: list[Path] = []
        verified = False
        try:
            await asyncio.to_thread(received.place, root, start, current, written, workspace)
            while True:
                frame = await link.incoming()
                kind = body(frame)
                if kind == "file_data" and current.fd is not None:
                    await asyncio.to_thread(received.write_and_hash, current.fd, frame.file_data.data,
                                            current.hasher)
                    current.received += len(frame.file_data.data)
                elif kind == "file_end":
                    break
                else:
                    raise TransportError(f"unexpected {kind} from the device within {start.path!r}")
            if current.received != start.size or frame.file_end.sha256 != current.hasher.digest():
                raise TransportError(f"{start.path!r} from the device does not match its digest "
                                     f"({current.received} of {start.size} bytes)")
            verified = True
        finally:  # closed either way; owner, mode and mtime only on what verified (the rest is removed)
            fd, current.fd = current.fd, None
            await asyncio.to_thread(received.finish_file, fd, current.path if verified else None, start)
