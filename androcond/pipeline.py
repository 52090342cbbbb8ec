"""One migration, end to end: preflight → checkpoint → stream → restore on the device → done, or a rollback
that restores the container at the source. Every transition is journaled before it takes effect.

Exactly once: the source checkpoint is kept until the agent confirms the container runs on the device. A
migration that fails before the commit was sent is rolled back at the source at once; one that fails after
(the link broke while the device restored) asks the agent first and rolls back only on its word that the
container is not running there. Without an answer it stays unresolved and :func:`resolve` retries later.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import popcorn, runc
from .adb_link import AdbClient, AdbError
from .config import Settings
from .devices import DeviceError, agent_endpoint
from .engine import Engine, EngineError
from .errors import AndrocondError
from .journal import FROZEN, Journal, MigrationRecord
from .layer import LayerError, checkpoint_files, tree_files
from .logging import get_logger, log_context
from .payload import OutgoingFile, Progress
from .popcorn import PopcornError
from .protocol import protocol_pb2 as pb
from .recoder import RecodeOptions, RecodeRefused, VdsoTemplate, preflight_processes, recode_async
from .rootfs import container_root
from .transport import AgentConnection, AgentRefused, TransportError

log = get_logger(__name__)

# Room kept on the device beyond the estimate (CRIU work files, engine metadata).
SPACE_MARGIN = 128 * 1024 * 1024


class Rejected(AndrocondError):
    """Preflight refused the migration; nothing was frozen and the container keeps running at the source."""


class Unresolved(AndrocondError):
    """The device may or may not run the container (no answer from the agent): never restore at the source
    on a guess. The journal keeps the migration open for the resolver."""


@dataclass(frozen=True)
class CrossIsa:
    pids: list[int]  # every task of the container (host pids), for the Popcorn notify
    vdso: VdsoTemplate  # the device kernel's, from the agent's hello


@dataclass
class Context:
    settings: Settings
    journal: Journal
    engine: Engine
    adb: AdbClient
    # Called after each journaled transition (webhooks, systemd status) and when a migration ends (metrics).
    on_change: Callable[[MigrationRecord], Awaitable[None]] | None = None
    on_end: Callable[[MigrationRecord], None] | None = None


def new_record(container_id: str, container_name: str, device: str, origin: str, keep_source: bool) -> MigrationRecord:
    mid = uuid.uuid4().hex
    return MigrationRecord(id=mid, container_id=container_id, container_name=container_name, device=device,
                           origin=origin, keep_source=keep_source, checkpoint_name=f"androcond-{mid[:12]}")


def target_config(inspect: dict[str, Any]) -> dict[str, Any]:
    """The device's `containers/create` body: the same image, command and environment, named volumes."""
    cfg = inspect["Config"]
    host = inspect.get("HostConfig") or {}
    labels = {k: v for k, v in (cfg.get("Labels") or {}).items() if not k.startswith("androcond.")}
    mounts = [{"Type": "volume", "Source": m["Name"], "Target": m["Destination"], "ReadOnly": not m.get("RW", True)}
              for m in inspect.get("Mounts") or [] if m.get("Type") == "volume"]
    config: dict[str, Any] = {key: cfg[key] for key in ("Image", "Cmd", "Entrypoint", "Env", "WorkingDir", "User",
                                                        "Tty", "OpenStdin", "StdinOnce", "StopSignal", "Hostname")
                              if cfg.get(key) not in (None, "")}
    config["Labels"] = labels
    config["HostConfig"] = {"Mounts": mounts, "NetworkMode": host.get("NetworkMode") or "default"}
    return config


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


class Migration:
    def __init__(self, ctx: Context, record: MigrationRecord) -> None:
        self.ctx = ctx
        self.record = record
        self.progress = Progress()
        self._started = time.monotonic()
        self._frozen_at: float | None = None
        self._source_root = Path("/var/lib/docker")
        self._cross: CrossIsa | None = None  # set by preflight for an x86_64 → aarch64 move
        self._profile: str | None = None

    async def _set(self, state: str, detail: str = "") -> None:
        self.record.state = state
        await self.ctx.journal.save(self.record, detail)
        log.info("migration state", state=state, **({"detail": detail} if detail else {}))
        if self.ctx.on_change is not None:
            await self.ctx.on_change(self.record)

    def _time(self, name: str, since: float) -> None:
        self.record.timings[name] = round(time.monotonic() - since, 3)

    async def run(self) -> MigrationRecord:
        with log_context(migration_id=self.record.id, container=self.record.container_name,
                         device=self.record.device):
            try:
                await self._migrate()
            except Rejected as exc:
                if self.record.state in FROZEN:  # a refusal can only mean "nothing frozen" before the freeze
                    await self._recover(str(exc))
                else:
                    self.record.error = str(exc)
                    await self._set("rejected", str(exc))
            except Unresolved as exc:
                self.record.error = str(exc)
                await self.ctx.journal.save(self.record, str(exc))
                log.error("migration unresolved; will ask the device again", error=str(exc))
            except asyncio.CancelledError:
                # Shutdown or an outside cancel: never leave the container frozen.
                await asyncio.shield(self._recover("cancelled (daemon shutting down)"))
                raise
            except (AndrocondError, OSError) as exc:
                await self._recover(str(exc))
            finally:
                await asyncio.to_thread(shutil.rmtree, self._recode_dir(), True)
            self._time("total_s", self._started)
            await self.ctx.journal.save(self.record)
            if self.ctx.on_end is not None:
                self.ctx.on_end(self.record)
            return self.record

    async def _migrate(self) -> None:
        record = self.record
        ctx = self.ctx
        device = ctx.settings.devices.get(record.device)
        if device is None:
            raise Rejected(f"unknown device {record.device!r}")
        await self._set("preflight")
        t0 = time.monotonic()
        inspect = await self._inspect_source()
        self._source_root = Path(str((await ctx.engine.info())["DockerRootDir"]))
        try:
            async with agent_endpoint(device, ctx.adb) as endpoint:
                try:
                    link = await AgentConnection.open(endpoint)
                except TransportError as exc:
                    raise Rejected(f"device {record.device} is not reachable: {exc}") from exc
                async with link:
                    estimate = await self._preflight(link, inspect)
                    # The target container is made (and the image shipped) while the source still runs:
                    # none of that belongs in the downtime.
                    await self._prepare(link, inspect, estimate)
                    self._time("preflight_s", t0)
                    if self._cross is not None:
                        await self._notify(self._cross)
                    await self._checkpoint(inspect)
                    sent = await self._stream(link, inspect)
                    await self._commit(link, sent)
        except (AdbError, DeviceError) as exc:
            if record.state == "preflight":
                raise Rejected(f"device {record.device} is not reachable: {exc}") from exc
            raise

    async def _inspect_source(self) -> dict[str, Any]:
        try:
            inspect = await self.ctx.engine.inspect_container(self.record.container_id)
        except EngineError as exc:
            raise Rejected(f"cannot inspect the container: {exc}") from exc
        if not inspect["State"].get("Running"):
            raise Rejected(f"the container is not running (status {inspect['State'].get('Status')})")
        return inspect

    async def _preflight(self, link: AgentConnection, inspect: dict[str, Any]) -> int:
        """Refuse what cannot land, before anything is frozen; return the bytes it will take on the device."""
        binds = [m.get("Source", "?") for m in inspect.get("Mounts") or [] if m.get("Type") == "bind"]
        if binds:
            raise Rejected(f"bind mount {binds[0]} cannot move with the container (its data lives on this host); "
                           "use a named volume")
        self._profile = self.ctx.settings.devices[self.record.device].profile
        host_isa = platform.machine()
        if link.hello.isa != host_isa:
            self._cross = await self._cross_isa_preflight(link.hello, host_isa, inspect)
        if inspect.get("GraphDriver", {}).get("Name") != "overlay2":
            raise Rejected("the source engine's storage driver is not overlay2")
        upper = Path(inspect["GraphDriver"]["Data"]["UpperDir"])
        volumes = [Path(m["Source"]) for m in inspect.get("Mounts") or [] if m.get("Type") == "volume"]
        disk = await asyncio.to_thread(lambda: sum(_tree_size(p) for p in [upper, *volumes]))
        memory = await self._memory_usage()
        needed = disk + memory + SPACE_MARGIN
        if needed > link.hello.free_bytes:
            raise Rejected(f"the device has {link.hello.free_bytes} bytes free; this container needs about "
                           f"{needed} (memory {memory}, files {disk})")
        return disk + memory

    async def _cross_isa_preflight(self, hello: pb.AgentHello, host_isa: str, inspect: dict[str, Any]) -> CrossIsa:
        """x86_64 → aarch64 in the manner of criu-het: every task must be a Popcorn binary with both variants."""
        if (host_isa, hello.isa) != ("x86_64", "aarch64"):
            raise Rejected(f"cannot move from {host_isa} to a {hello.isa} device (only x86_64 → aarch64 is recoded)")
        if not hello.vdso:
            raise Rejected("the aarch64 device did not report its vdso (agent too old?)")
        pids = await asyncio.to_thread(popcorn.task_tree, int(inspect["State"]["Pid"]))
        try:
            await asyncio.to_thread(preflight_processes, pids, "x86_64", "aarch64")
        except RecodeRefused as exc:
            raise Rejected(f"cannot move to an aarch64 device: {exc}") from exc
        return CrossIsa(pids, VdsoTemplate(hello.vdso, hello.vvar_size, hello.page_size))

    async def _notify(self, cross: CrossIsa) -> None:
        """The Popcorn protocol: every task reaches a migration point with its aarch64 registers ready."""
        t0 = time.monotonic()
        try:
            await popcorn.notify(cross.pids, "aarch64")
        except PopcornError as exc:
            raise Rejected(f"the container did not reach a migration point: {exc}") from exc
        self._time("notify_s", t0)

    def _recode_dir(self) -> Path:
        return self.ctx.settings.daemon.state_dir / "recode" / self.record.id

    async def _recode(self, inspect: dict[str, Any]) -> Path:
        """The images as the device needs them: recoded for its ISA and/or its profile, else as dumped."""
        source = self._checkpoint_dir()
        if self._cross is None and self._profile is None:
            return source
        t0 = time.monotonic()
        out = self._recode_dir()
        await asyncio.to_thread(shutil.rmtree, out, True)
        options = RecodeOptions(target="aarch64" if self._cross else platform.machine(), profile=self._profile,
                                vdso=self._cross.vdso if self._cross else None)
        if self._cross is not None:
            async with container_root(inspect) as root:
                await recode_async(source, out, replace(options, root=root))
        else:
            await recode_async(source, out, options)
        self._time("recode_s", t0)
        return out

    async def _memory_usage(self) -> int:
        try:
            stats = await self.ctx.engine.stats(self.record.container_id)
        except EngineError:
            return 0
        return int((stats.get("memory_stats") or {}).get("usage") or 0)

    async def _checkpoint(self, inspect: dict[str, Any]) -> None:
        await self._set("checkpointing")
        docker = self.ctx.settings.docker
        restart = str((inspect.get("HostConfig") or {}).get("RestartPolicy", {}).get("Name") or "")
        fast = docker.checkpoint == "runc" and runc.usable(docker.runc_root, self.record.container_id, restart)
        self._frozen_at = time.monotonic()
        if fast:
            await runc.checkpoint(docker.runc_root, self.record.container_id, self._checkpoint_dir())
            self._time("checkpoint_s", self._frozen_at)
            # The engine learns of the stop a moment later; a rollback must not find it "running" still.
            await self.ctx.engine.wait_stopped(self.record.container_id)
        else:
            await self.ctx.engine.create_checkpoint(self.record.container_id, self.record.checkpoint_name)
            self._time("checkpoint_s", self._frozen_at)
        log.info("checkpointed", via="runc" if fast else "engine", seconds=self.record.timings["checkpoint_s"])

    def _checkpoint_dir(self) -> Path:
        return self._source_root / "containers" / self.record.container_id / "checkpoints" / \
            self.record.checkpoint_name

    async def _prepare(self, link: AgentConnection, inspect: dict[str, Any], estimate: int) -> None:
        config = target_config(inspect)
        begin = pb.Begin(migration_id=self.record.id, container_name=self.record.container_name,
                         image=str(config["Image"]), create_config_json=json.dumps(config),
                         checkpoint_name=self.record.checkpoint_name, total_bytes=estimate)
        try:
            ack = await link.begin(begin)
        except AgentRefused as exc:
            raise Rejected(f"the device refused: {exc}") from exc
        if ack.need_image:
            image = str(config["Image"])
            log.info("shipping the image to the device", image=image)
            await link.send_files([OutgoingFile(pb.IMAGE_TAR, "image.tar",
                                                stream=lambda: self.ctx.engine.save_image(image))])

    async def _stream(self, link: AgentConnection, inspect: dict[str, Any]) -> int:
        """Send the checkpoint, the writable layer and the volumes (read now that the container is stopped)."""
        await self._set("streaming")
        t0 = time.monotonic()
        upper = Path(inspect["GraphDriver"]["Data"]["UpperDir"])
        volumes = [(str(m["Name"]), Path(m["Source"]))
                   for m in inspect.get("Mounts") or [] if m.get("Type") == "volume"]

        images = await self._recode(inspect)

        def collect() -> list[OutgoingFile]:
            files = checkpoint_files(images) + tree_files(upper, pb.ROOTFS)
            for name, source in volumes:
                files += tree_files(source, pb.VOLUME, volume=name)
            return files

        try:
            files = await asyncio.to_thread(collect)
        except LayerError as exc:
            raise TransportError(f"cannot read what must move: {exc}") from exc
        await link.send_files(files, progress=self._on_progress)
        self.record.bytes_sent = self.progress.bytes_sent
        self._time("stream_s", t0)
        return len(files)

    def _on_progress(self, progress: Progress) -> None:
        self.progress = progress

    async def _commit(self, link: AgentConnection, file_count: int) -> None:
        await self._set("restoring")
        t0 = time.monotonic()
        try:
            outcome = await link.commit(file_count)
        except TransportError as exc:
            # The device may have restored before the link broke: only the agent can say.
            outcome = await self._ask_agent(exc)
        self._time("restore_s", t0)
        if outcome.state != "running":
            raise TransportError(f"the device did not restore the container: {outcome.error or outcome.state}")
        self.record.target_container_id = outcome.container_id
        if self._frozen_at is not None:
            self._time("downtime_s", self._frozen_at)
        # "done" means all is settled: the source goes first (a crash in between is resolved as done too).
        await self._finish_source()
        await self._set("done", f"running on {self.record.device} as {outcome.container_id[:12]}")

    async def _ask_agent(self, cause: BaseException) -> pb.Outcome:
        device = self.ctx.settings.devices[self.record.device]
        try:
            async with agent_endpoint(device, self.ctx.adb) as endpoint, \
                    await AgentConnection.open(endpoint) as link:
                async with asyncio.timeout(60):
                    while True:
                        outcome = await link.query(self.record.id)
                        if outcome.state not in ("receiving", "restoring"):
                            return outcome
                        await asyncio.sleep(0.2)  # the agent is still finishing the restore it started
        except (TransportError, AdbError, DeviceError, TimeoutError) as exc:
            raise Unresolved(f"lost the device during the restore ({cause}) and cannot ask it: {exc}") from exc

    async def _finish_source(self) -> None:
        if self.record.keep_source:
            return
        try:
            await self.ctx.engine.remove_container(self.record.container_id, force=True)
        except EngineError as exc:
            log.warning("could not remove the source container", error=str(exc))

    async def _recover(self, reason: str) -> None:
        """After a failure: restore at the source if (and only if) the device does not run the container."""
        record = self.record
        record.error = reason
        log.warning("migration failed", state=record.state, error=reason)
        if record.state == "restoring":
            try:
                outcome = await self._ask_agent(TransportError(reason))
            except Unresolved as exc:
                record.error = str(exc)
                await self.ctx.journal.save(record, str(exc))
                return
            if outcome.state == "running":
                record.target_container_id = outcome.container_id
                await self._finish_source()
                await self._set("done", "the device confirmed the restore after an error")
                return
        if record.state not in FROZEN:
            # Nothing was frozen: the container never stopped running at the source.
            await self._set("failed" if record.state != "preflight" else "rejected", reason)
            return
        await self.rollback(reason)

    async def rollback(self, reason: str) -> None:
        await self._set("rolling-back", reason)
        try:
            state = (await self.ctx.engine.inspect_container(self.record.container_id))["State"]
            if not state.get("Running"):
                await self.ctx.engine.start_container(self.record.container_id,
                                                      checkpoint=self.record.checkpoint_name)
        except EngineError as exc:
            self.record.error = (f"{reason}; restoring at the source also failed: {exc} (checkpoint "
                                 f"{self.record.checkpoint_name} kept: docker start --checkpoint "
                                 f"{self.record.checkpoint_name} {self.record.container_name})")
            await self._set("failed", self.record.error)
            return
        await self._set("rolled-back", reason)


async def resolve(ctx: Context, record: MigrationRecord) -> MigrationRecord:
    """Settle a migration a previous daemon left unfinished (crash, SIGKILL, power loss)."""
    migration = Migration(ctx, record)
    with log_context(migration_id=record.id, container=record.container_name, device=record.device):
        log.info("resolving an unfinished migration", state=record.state)
        if record.state not in FROZEN:
            await migration._set("failed", "the daemon stopped before anything was frozen")
            return record
        if record.state != "restoring":
            # No commit was sent: the device cannot be running it (its agent discards what it received).
            await migration.rollback("the daemon restarted before the device was asked to restore")
            return record
        try:
            outcome = await migration._ask_agent(TransportError("the daemon restarted"))
        except Unresolved as exc:
            log.error("cannot resolve yet", error=str(exc))
            raise
        if outcome.state == "running":
            record.target_container_id = outcome.container_id
            await migration._finish_source()
            await migration._set("done", "the device had restored it before the daemon restarted")
        else:
            await migration.rollback(f"the daemon restarted mid-migration; device says {outcome.state}")
        return record

