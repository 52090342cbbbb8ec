"""The host's Docker engine as a migration's source: the container runs here before the move and again after a
rollback. It reads what preflight needs, freezes the container (through runc straight into the engine's
checkpoint directory when safe, else through the engine), lists what must move, and restores or removes it."""

from __future__ import annotations

import asyncio
import platform
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DeviceSettings, DockerSettings
from ..criu import compat as criu_compat
from ..criu import runc
from ..criu.lazy_dump import LAZY_DUMP, LazyDump, LazyDumpError
from ..criu.leftovers import FLAT_FILE, NONCE_FILE, mark_flat, place_nonce, remove_extractions
from ..emulation.cpu import cpu_fit, read_source_cpu
from ..emulation.live import live_refusals
from ..engine import Engine, EngineError, restart_policy
from ..faults import NO_FAULTS, Faults
from ..link.layer import tree_files
from ..link.payload import OutgoingFile
from ..logging import get_logger
from ..migration import container_config
from ..migration.container_config import TargetPlan
from ..migration.errors import Rejected
from ..migration.journal import MigrationRecord
from ..migration.plan import Frozen, SourceFacts
from ..popcorn import notify as popcorn
from ..popcorn.notify import PopcornError, Regset
from ..protocol import protocol_pb2 as pb
from ..protocol.create_body import PRIVATE_KEY
from ..protocol.emulation import RESTORER_MOUNTED, restorer_mounted
from ..protocol.tree import tree_size
from ..recoder import RecodeRefused, preflight_processes
from .rootfs import container_root

log = get_logger(__name__)
DEFAULT_ROOT = Path("/var/lib/docker")


def upper_dir(inspect: dict[str, Any]) -> Path:
    driver = inspect.get("GraphDriver") or {}
    upper = (driver.get("Data") or {}).get("UpperDir")
    if driver.get("Name") != "overlay2" or not upper:
        raise Rejected("the source engine's storage driver is not overlay2")
    return Path(str(upper))


def named_volumes(inspect: dict[str, Any]) -> list[tuple[str, Path]]:
    return [(str(m["Name"]), Path(str(m["Source"])))
            for m in inspect.get("Mounts") or [] if m.get("Type") == "volume" and m.get("Name") and m.get("Source")]


def memory_usage(stats: object) -> int:
    """Bytes of memory in use from the engine's stats, 0 when it does not say (a container that stopped a
    moment ago, e.g. frozen by another tool, answers without memory_stats)."""
    if not isinstance(stats, dict):
        return 0
    memory = stats.get("memory_stats")
    usage = memory.get("usage") if isinstance(memory, dict) else None
    return usage if isinstance(usage, int) and usage > 0 else 0


def _read_nonce(checkpoint_dir: Path) -> str:
    try:
        return (checkpoint_dir / NONCE_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


@dataclass(frozen=True)
class Machine:
    """What this machine itself offers, as opposed to the container: what its CRIU dumps with, its cgroups, the
    paths its engine masks that it lacks, whether its page server can serve lazily."""

    isa: str
    criu_options: tuple[str, ...]
    cgroup_v2: bool
    absent_paths: frozenset[str]
    page_server_blocker: str  # why CRIU's page server cannot serve lazily from here, "" when it can


def this_machine() -> Machine:
    """Read off this machine (/proc, /etc/criu/runc.conf). Blocking."""
    return Machine(platform.machine(), tuple(criu_compat.runc_options()), criu_compat.cgroup_v2(),
                   frozenset(criu_compat.absent_paths()), criu_compat.page_server_blocker())


class HostSource:
    def __init__(self, engine: Engine, docker: DockerSettings, record: MigrationRecord,
                 stop_timeout_s: float, *, machine: Callable[[], Machine] = this_machine,
                 faults: Faults = NO_FAULTS) -> None:
        self.engine = engine
        self.docker = docker
        self.record = record
        self._stop_timeout_s = stop_timeout_s
        self._machine = machine
        self._faults = faults
        self._root: Path | None = None  # the engine's DockerRootDir, asked once
        self._nonce = ""  # marks this migration's checkpoint, to find containerd's copies of it again
        # After a freeze through runc: until the engine has seen the source stop (awaited before the source is
        # restored or removed; the stream and the target's restore need not wait for it).
        self._stopping: asyncio.Task[None] | None = None
        self._dump: LazyDump | None = None  # the flat freeze's lazy dump, holding the tasks until it ends

    # --- what it is ------------------------------------------------------------------------------------
    async def inspect(self) -> dict[str, Any]:
        """The running container (refused if it does not run), and where the engine keeps checkpoints."""
        try:
            inspect = await self.engine.inspect_container(self.record.container_id)
        except EngineError as exc:
            raise Rejected(f"cannot inspect the container: {exc}") from exc
        if not inspect["State"].get("Running"):
            raise Rejected(f"the container is not running (status {inspect['State'].get('Status')})")
        await self._engine_root()
        return inspect

    async def _engine_root(self) -> Path:
        if self._root is None:
            self._root = Path(str((await self.engine.info()).get("DockerRootDir") or DEFAULT_ROOT))
        return self._root

    async def facts(self, inspect: dict[str, Any]) -> SourceFacts:
        pid = int(inspect["State"].get("Pid") or 0)
        if await asyncio.to_thread(restorer_mounted, pid):
            raise Rejected(RESTORER_MOUNTED)
        pids = await asyncio.to_thread(criu_compat.task_tree, pid)
        upper = upper_dir(inspect)
        volumes = [source for _name, source in named_volumes(inspect)]

        def read() -> SourceFacts:
            machine = self._machine()
            return SourceFacts(
                pids=tuple(pids), va_bits=criu_compat.tasks_va_bits(pids), isa=machine.isa,
                criu_options=machine.criu_options, inet_sockets=criu_compat.inet_sockets(pids),
                cgroup_v2=machine.cgroup_v2, absent_paths=machine.absent_paths,
                page_server_blocker=machine.page_server_blocker, memory=0,
                disk=sum(tree_size(p) for p in [upper, *volumes]))

        facts = await asyncio.to_thread(read)
        return SourceFacts(**{**facts.__dict__, "memory": await self._memory_usage()})

    async def _memory_usage(self) -> int:
        try:
            return memory_usage(await self.engine.stats(self.record.container_id))
        except EngineError as exc:
            log.info("no memory figure from the engine; estimating without it", error=str(exc))
            return 0

    async def sockets_blocker(self, count: int) -> str:
        """Why this host's CRIU cannot dump the container's INET sockets on its kernel, '' when it can."""
        here, release = await criu_compat.host_criu_version(), criu_compat.kernel_release()
        if criu_compat.dumps_inet_sockets(here, release):
            return ""
        return f"the container holds {count} network socket(s), and this host's " \
               f"{criu_compat.socket_advice(here, release)}"

    async def target_plan(self, inspect: dict[str, Any], device: DeviceSettings) -> TargetPlan:
        """The target's create body; a field the target cannot honour refuses the migration here."""
        drivers = {}
        for name in ((inspect.get("NetworkSettings") or {}).get("Networks") or {}):
            if name not in container_config.BUILTIN_NETWORKS:
                drivers[name] = str((await self.engine.inspect_network(name)).get("Driver") or "bridge")
        try:
            return container_config.plan(inspect, allow_privileged=device.allow_privileged,
                                         network_drivers=drivers)
        except container_config.ConfigRefused as exc:
            raise Rejected(f"the container's configuration cannot move: {exc}") from exc

    async def popcorn_executables(self, pids: tuple[int, ...], target_isa: str) -> tuple[str, ...]:
        """Every task must be a Popcorn binary with both variants beside it (criu-het's way across ISAs)."""
        try:
            found = await asyncio.to_thread(preflight_processes, list(pids), platform.machine(), target_isa)
        except RecodeRefused as exc:
            raise Rejected(f"cannot move to an {target_isa} device: {exc}") from exc
        return tuple(found)

    async def notify(self, pids: tuple[int, ...], target_isa: str) -> tuple[Regset, ...]:
        """The Popcorn protocol: every task reaches a migration point with the target's registers ready."""
        try:
            return tuple(await popcorn.notify(list(pids), target_isa))
        except PopcornError as exc:
            raise Rejected(f"the container did not reach a migration point: {exc}") from exc

    async def emulation_blockers(self, pids: tuple[int, ...],
                                 emulator_version: str) -> tuple[list[str], list[str]]:
        """Read from the live processes, before anything is frozen: what the restorer cannot rebuild, and
        CPU features the processes may have chosen that the emulator lacks."""

        def read() -> tuple[list[str], list[str]]:
            blockers = live_refusals(list(pids))
            notes: list[str] = []
            for pid in pids[:1]:  # one process is all an emulated restore takes (live_refusals says so)
                fit = cpu_fit(read_source_cpu(pid), emulator_version)
                if not fit.ok:
                    blockers.append(fit.reason)
                notes += fit.notes
            return blockers, notes

        return await asyncio.to_thread(read)

    def image_name(self, inspect: dict[str, Any]) -> str:
        return str(inspect["Config"]["Image"])

    def save_image(self, image: str) -> AsyncIterator[bytes]:
        return self.engine.save_image(image)

    # --- the freeze --------------------------------------------------------------------------------------
    def checkpoint_dir(self) -> Path:
        root = self._root or DEFAULT_ROOT
        return root / "containers" / self.record.container_id / "checkpoints" / self.record.checkpoint_name

    async def freeze(self, inspect: dict[str, Any], *, flat: bool = False, relay: bool = False,
                     readout: bool = False) -> Frozen:
        """The checkpoint in the engine's directory (`relay` is moot: the stream reads it there; `readout` never
        asked: the host's containers run natively, and preflight says so)."""
        if readout:
            raise Rejected("the host's containers run natively: there is no emulator to read one out of")
        # Lifted while `checkpointing`: whatever fails from here, the rollback (restore) puts it back.
        await self._hold_restarts(inspect)
        # With the restart policy lifted, runc's checkpoint is safe: the engine will not start it afresh.
        fast = self.docker.checkpoint == "runc" and await asyncio.to_thread(
            runc.usable, self.docker.runc_root, self.record.container_id)
        at = time.monotonic()
        if flat and fast:
            return await self._freeze_flat(at)
        if flat:
            log.warning("the flat freeze needs runc (checkpoint = \"runc\"): dumping the memory")
        if fast:
            await runc.checkpoint(self.docker.runc_root, self.record.container_id, self.checkpoint_dir())
            # The engine learns of the stop a moment later (0.4 s for a task that frees 1 GiB as it exits); a
            # rollback must not find it "running" still. The images are complete and the tasks killed, so the
            # stream goes on meanwhile.
            self._stopping = asyncio.create_task(self._until_stopped(),
                                                 name=f"source-stopped-{self.record.id[:8]}")
        else:
            await self.engine.create_checkpoint(self.record.container_id, self.record.checkpoint_name)
        frozen = Frozen(self.checkpoint_dir(), at, "runc" if fast else "engine")
        # Marks this checkpoint, so a rollback can find containerd's copy of it again (and remove it).
        self._nonce = await asyncio.to_thread(place_nonce, frozen.images)
        return frozen

    def _home_restart_policy(self) -> dict[str, Any]:
        """The restart policy the container has at home, as the journal kept it before the freeze."""
        private = self.record.home_config.get(PRIVATE_KEY) or {}
        return dict(private.get("restart_policy") or {})

    async def _hold_restarts(self, inspect: dict[str, Any]) -> None:
        """Lift the restart policy for the move (`engine.restart_policy` says why). The move's config carries
        it: the target applies it, a rollback puts it back from there (`_put_back_restart_policy`)."""
        policy = restart_policy(inspect)
        if policy is None:
            return
        try:
            await self.engine.lift_restart_policy(self.record.container_id)
        except EngineError as exc:
            raise Rejected(f"cannot lift the container's restart policy for the move: {exc}") from exc
        log.info("restart policy lifted for the move", policy=policy)

    async def _put_back_restart_policy(self) -> None:
        """Best effort: the container runs either way, and a failure says so."""
        policy = self._home_restart_policy()
        if not policy:
            return
        try:
            await self.engine.update_container(self.record.container_id, {"RestartPolicy": policy})
        except EngineError as exc:
            log.error("the container runs at the source again, but its restart policy could not be put back",
                      policy=policy, error=str(exc))

    async def _freeze_flat(self, at: float) -> Frozen:
        """A lazy dump of the paused container, its directory marked before the pause (a daemon killed at any
        point of the freeze leaves the mark, and its restart unpauses). On a failure the tasks are left paused
        (frozen): the rollback unpauses them."""
        cid = self.record.container_id
        await asyncio.to_thread(mark_flat, self.checkpoint_dir())
        try:
            await self.engine.pause(cid)
        except EngineError:
            await asyncio.to_thread(shutil.rmtree, self.checkpoint_dir(), True)  # a pause not ours (its user's)
            raise
        try:
            dump = await LazyDump.start(self.docker.runc_root, cid, self.checkpoint_dir())
        except LazyDumpError as exc:
            raise runc.RuncError(str(exc)) from exc
        if self._faults.armed("dump-end", self.record.container_name):
            dump.on_thawed = dump.kill_dumper
        self._dump = dump
        frozen = Frozen(self.checkpoint_dir(), at, LAZY_DUMP, pages=dump)
        self._nonce = await asyncio.to_thread(place_nonce, frozen.images)
        return frozen

    async def _until_stopped(self) -> None:
        async with asyncio.timeout(self._stop_timeout_s):
            await self.engine.wait_stopped(self.record.container_id)

    async def stopped(self) -> None:
        """Wait (bounded) until the engine has seen the checkpointed source stop. A failure is logged: the
        rollback then asks the engine itself, and removing the source forces it."""
        task, self._stopping = self._stopping, None
        if task is None:
            return
        try:
            await task
        except (EngineError, TimeoutError) as exc:
            log.warning("the engine did not report the checkpointed source stopped", error=str(exc))

    async def end_dump(self) -> None:
        """End the flat freeze's lazy dump if it still holds the tasks (a failure before the commit, or one the
        commit did not close): its connection is reset, CRIU puts them back frozen, runc exits."""
        dump = self._dump
        if dump is not None:
            await dump.close()

    async def forget_stopping(self) -> None:
        """A migration that finished no longer needs to wait for the engine. One that did not (a second cancel
        while settling) leaves it to the settle task, which awaits it before restoring the source."""
        await self.end_dump()
        task = self._stopping
        if task is not None and self.record.finished:
            self._stopping = None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # --- what moves ----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def mounted_root(self, inspect: dict[str, Any]) -> AsyncIterator[Path]:
        """The stopped container's root filesystem (a cross-ISA move reads the binaries there)."""
        async with container_root(inspect) as root:
            yield root

    def payload(self, inspect: dict[str, Any]) -> list[OutgoingFile]:
        """The writable layer and the named volumes, read now that the container is stopped. Blocking."""
        files = tree_files(upper_dir(inspect), pb.ROOTFS)
        for name, source in named_volumes(inspect):
            files += tree_files(source, pb.VOLUME, volume=name)
        return files

    # --- after the move ------------------------------------------------------------------------------------
    async def remove(self) -> None:
        self._faults.inject("finish-source", self.record.container_name)
        await self.engine.remove_container(self.record.container_id, force=True)

    async def restore(self) -> None:
        """Start the container again from its checkpoint (unless it runs: a restore that was already done), or
        unpause it after a flat freeze (its tasks, held frozen, are the container); then its restart policy is
        its own again."""
        await self._restart()
        await self._put_back_restart_policy()

    async def _restart(self) -> None:
        await self.end_dump()
        await self.stopped()
        await self._engine_root()
        # Only a flat freeze's pause is ours to undo (a container its user paused stays paused).
        flat = await asyncio.to_thread((self.checkpoint_dir() / FLAT_FILE).exists)
        state = (await self.engine.inspect_container(self.record.container_id))["State"]
        if flat and state.get("Paused"):
            await self.engine.unpause(self.record.container_id)
            return
        if state.get("Running"):
            return
        if flat:
            raise EngineError("the container's tasks are gone and its flat freeze kept no memory to restore from")
        await self.engine.start_container(self.record.container_id, checkpoint=self.record.checkpoint_name)

    async def clean_after_rollback(self) -> None:
        """The container runs again at the source: its checkpoint and containerd's extraction of it (the
        whole memory, twice) are not needed any more. Best effort: a leftover is logged, never a failure."""
        if not self._nonce:  # settled after a restart: where the engine keeps checkpoints, ask it again
            try:
                await self._engine_root()
                self._nonce = await asyncio.to_thread(_read_nonce, self.checkpoint_dir())
            except (EngineError, OSError) as exc:
                log.warning("could not find the checkpoint to remove after the rollback", error=str(exc))
                return
        try:
            removed = await asyncio.to_thread(remove_extractions, self._nonce) if self._nonce else []
            await asyncio.to_thread(shutil.rmtree, self.checkpoint_dir(), True)
        except OSError as exc:
            log.warning("could not remove the checkpoint after the rollback", error=str(exc))
            return
        if removed:
            log.info("removed containerd's copy of the checkpoint", paths=[str(p) for p in removed])
