"""One migration, end to end: preflight → checkpoint → stream → restore on the device → done, or a rollback
that restores the container at the source. Every transition is journaled before it takes effect.

Exactly once: the source checkpoint is kept until the agent confirms the container runs on the device.
Whatever a migration raises — our errors, a library's, a bug — :meth:`Migration.run` contains it and settles
the container with one decision (:func:`androcond.states.decide`), the same one :func:`resolve` applies
after a restart: nothing frozen → failed; frozen, no commit sent → roll back at the source; commit sent →
ask the device, and without its answer stay unresolved (the daemon's resolver asks again), never guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import container_config, criu_compat, popcorn, runc
from .adb_link import AdbClient, AdbError
from .checkpoint_leftovers import NONCE_FILE, place_nonce, remove_extractions
from .config import Settings, TimeoutSettings
from .container_config import TargetPlan
from .devices import DeviceError, agent_endpoint
from .engine import Engine, EngineError
from .errors import AndrocondError
from .faults import armed, inject
from .images.lazy import split_lazy
from .journal import Journal, MigrationRecord
from .layer import LayerError, checkpoint_files, executables_for_target, replace_files, tree_files
from .logging import get_logger, log_context
from .page_server import PageServer, PageServerError
from .payload import OutgoingFile, Progress
from .popcorn import PopcornError
from .protocol import protocol_pb2 as pb
from .recoder import RecodeOptions, RecodeRefused, VdsoTemplate, preflight_processes, recode_async, stages_for
from .recoder.arch import VARIANT_SUFFIX
from .rootfs import container_root
from .states import FROZEN, TERMINAL, Action, DeviceAnswer, MigrationState, allowed, decide, device_answer, needs_device
from .transport import AgentConnection, AgentRefused, PhaseTimeouts, TransportError

log = get_logger(__name__)
S = MigrationState

# Room kept on the device beyond the estimate (CRIU work files, engine metadata).
SPACE_MARGIN = 128 * 1024 * 1024
# How often a device that is still busy with a migration (receiving, restoring) is asked again.
BUSY_POLL_S = 0.2


class Rejected(AndrocondError):
    """Preflight refused the migration; nothing was frozen and the container keeps running at the source."""


class PhaseBudgetSpent(AndrocondError, TimeoutError):
    """A phase of the migration ran past its deadline (`[timeouts]`)."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"the {phase} phase did not finish within {seconds:g}s")
        self.phase = phase
        self.seconds = seconds


class DeviceDidNotRestore(TransportError):
    """The agent answered the commit: it did not restore the container (its own error is the message)."""


@dataclass(frozen=True)
class CrossIsa:
    pids: list[int]  # every task of the container (host pids), for the Popcorn notify
    vdso: VdsoTemplate  # the device kernel's, from the agent's hello
    executables: list[str]  # the tasks' binaries as they see them: `<bin>_aarch64` goes there on the device


@dataclass
class Context:
    settings: Settings
    journal: Journal
    engine: Engine
    adb: AdbClient
    # Called after each journaled transition (webhooks, systemd status) and when a migration ends (metrics,
    # or the resolver when it ended unresolved).
    on_change: Callable[[MigrationRecord], Awaitable[None]] | None = None
    on_end: Callable[[MigrationRecord], None] | None = None


def new_record(container_id: str, container_name: str, device: str, origin: str, keep_source: bool) -> MigrationRecord:
    mid = uuid.uuid4().hex
    return MigrationRecord(id=mid, container_id=container_id, container_name=container_name, device=device,
                           origin=origin, keep_source=keep_source, checkpoint_name=f"androcond-{mid[:12]}")


def phase_timeouts(t: TimeoutSettings) -> PhaseTimeouts:
    return PhaseTimeouts(connect=t.connect, hello=t.connect, begin=t.preflight, file_ack=t.file_ack,
                         image_ack=t.image, commit=t.commit, query=t.query, stream_idle=t.stream_idle)


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


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


@asynccontextmanager
async def _budget(phase: str, seconds: float) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        if isinstance(exc, AndrocondError):  # a deadline of a layer below, already named
            raise
        raise PhaseBudgetSpent(phase, seconds) from exc


def _read_nonce(checkpoint_dir: Path) -> str:
    try:
        return (checkpoint_dir / NONCE_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


# Settle tasks that outlive a cancelled migration (shutdown): owned here until they end; the daemon waits
# for them within its shutdown budget.
_settling: set[asyncio.Task[None]] = set()


async def wait_for_settling(budget_s: float) -> int:
    """Wait (bounded) for rollbacks started by cancelled migrations; return how many are still running."""
    pending = set(_settling)
    if pending:
        await asyncio.wait(pending, timeout=budget_s)
    return sum(1 for task in pending if not task.done())


def cancel_settling() -> None:
    for task in _settling:
        task.cancel()


_source_criu: str | None = None


async def source_criu_version() -> str:
    """The CRIU runc runs on this host (asked once per daemon)."""
    global _source_criu  # noqa: PLW0603 - a process-wide fact, asked once
    if _source_criu is None:
        _source_criu = await criu_compat.local_criu_version()
    return _source_criu


class Migration:
    def __init__(self, ctx: Context, record: MigrationRecord) -> None:
        self.ctx = ctx
        self.record = record
        self.timeouts = ctx.settings.timeouts
        self.progress = Progress()
        self._frozen_at: float | None = None
        self._source_root = Path("/var/lib/docker")
        self._cross: CrossIsa | None = None  # set by preflight for an x86_64 → aarch64 move
        self._nonce = ""
        self._plan: TargetPlan | None = None  # the device's create body, decided in preflight
        # What the device needs of the images (ISA, profile, its CRIU, cgroups, paths), decided in preflight.
        self._recode_options = RecodeOptions(target=platform.machine())
        self._lazy = False  # post-copy, decided in preflight
        self._served = Path()  # post-copy: the images the page server serves (set by the stream)
        # After a freeze through runc: until the engine has seen the source stop (awaited before the source is
        # restored or removed; the stream and the device's restore need not wait for it).
        self._source_stopping: asyncio.Task[None] | None = None

    async def _set(self, state: MigrationState, detail: str = "") -> None:
        if not allowed(self.record.state, state):
            raise AssertionError(f"{self.record.state} → {state} is not a legal transition")
        if state in TERMINAL:  # with the final state, so whoever sees it (migrate --wait) sees the total too
            self.record.timings["total_s"] = round(time.time() - self.record.created_at, 3)
        self.record.state = state
        await self.ctx.journal.save(self.record, detail)
        log.info("migration state", state=str(state), **({"detail": detail} if detail else {}))
        if self.ctx.on_change is not None:
            await self.ctx.on_change(self.record)

    def _time(self, name: str, since: float) -> None:
        self.record.timings[name] = round(time.monotonic() - since, 3)

    # --- the supervisor ------------------------------------------------------------------------------------
    async def run(self) -> MigrationRecord:
        """Never raises but CancelledError: any failure ends in a settled (or knowingly unresolved) record."""
        with log_context(migration_id=self.record.id, container=self.record.container_name,
                         device=self.record.device):
            try:
                await self._migrate()
            except asyncio.CancelledError:
                # Shutdown or an outside cancel: never leave the container frozen. The settle task is owned
                # by _settling, so a second cancel cannot orphan it half-way.
                task = asyncio.create_task(self._settle_safely("cancelled (daemon shutting down)"),
                                           name=f"settle-{self.record.id[:8]}")
                _settling.add(task)
                task.add_done_callback(_settling.discard)
                await asyncio.shield(task)
                raise
            except Exception as exc:
                await self._contain(exc)
            finally:
                await self._forget_source_stopping()
                await asyncio.to_thread(shutil.rmtree, self._recode_dir(), True)
                await asyncio.to_thread(shutil.rmtree, self._lazy_dir(), True)
            await self._end()
            return self.record

    async def _contain(self, exc: Exception) -> None:
        record = self.record
        if record.finished:
            # E.g. the adb forward could not be removed after "done": the migration stays done.
            log.warning("error after the migration finished; it stays finished", state=str(record.state),
                        error=str(exc))
            return
        expected = isinstance(exc, AndrocondError | OSError)
        if expected:
            reason = str(exc)
        else:
            reason = f"internal error in {record.state}: {exc.__class__.__name__}: {exc}"
            log.error("migration hit an unexpected error", state=str(record.state), error=reason, exc_info=exc)
        rejected = isinstance(exc, Rejected) or (expected and record.state == S.PREFLIGHT)
        known = DeviceAnswer.NOT_RUNNING if isinstance(exc, DeviceDidNotRestore) else None
        await self._settle_safely(reason, rejected=rejected, known=known)

    async def _settle_safely(self, reason: str, *, rejected: bool = False,
                             known: DeviceAnswer | None = None) -> None:
        try:
            await self.settle(reason, rejected=rejected, known=known)
        except Exception as exc:  # the journal or the engine failed while settling: the resolver retries
            log.error("could not settle the migration; the resolver will", error=str(exc), exc_info=exc)
            self.record.error = f"{reason}; settling failed: {exc}"

    async def _end(self) -> None:
        try:
            await self.ctx.journal.save(self.record)
        except Exception as exc:
            log.error("could not save the migration's timings", error=str(exc))
        if self.ctx.on_end is not None:
            try:
                self.ctx.on_end(self.record)
            except Exception as exc:
                log.error("migration end hook failed", error=str(exc), exc_info=exc)

    # --- settling: one decision, in flight and after a restart ----------------------------------------------
    async def settle(self, reason: str, *, rejected: bool = False, known: DeviceAnswer | None = None) -> bool:
        """Bring the container to exactly once after `reason`; True once the migration is finished."""
        record = self.record
        state = record.state
        answer, outcome = DeviceAnswer.NOT_ASKED, None
        if needs_device(state):
            if known is not None:
                answer = known
            else:
                answer, outcome = await self._ask_device()
        action = decide(state, answer)
        log.info("settling", state=str(state), device_says=str(answer), action=str(action), reason=reason)
        if action == Action.NOTHING:
            return True
        if action == Action.FAIL:
            record.error = reason
            await self._set(S.REJECTED if rejected else S.FAILED, reason)
        elif action == Action.ROLL_BACK:
            record.error = reason
            await self.rollback(reason)
        elif action == Action.FINISH:
            assert outcome is not None
            await self._finish(outcome, "the device confirmed the restore after: " + reason)
        else:
            record.error = f"{reason}; the device could not say whether it runs the container ({answer})"
            await self.ctx.journal.save(record, record.error)
            log.error("migration unresolved; will ask the device again", error=record.error)
            return False
        return True

    async def _ask_device(self) -> tuple[DeviceAnswer, pb.Outcome | None]:
        """What the agent says of this migration; waits (bounded) while it is still receiving or restoring."""
        device = self.ctx.settings.devices.get(self.record.device)
        if device is None:
            log.error("the device is no longer configured; cannot ask it", device=self.record.device)
            return DeviceAnswer.NO_ANSWER, None
        outcome: pb.Outcome | None = None
        try:
            async with asyncio.timeout(self.timeouts.settle), agent_endpoint(device, self.ctx.adb) as endpoint, \
                    await AgentConnection.open(endpoint, phase_timeouts(self.timeouts)) as link:
                while True:
                    outcome = await link.query(self.record.id)
                    answer = device_answer(outcome.state)
                    if answer != DeviceAnswer.BUSY:
                        return answer, outcome
                    await asyncio.sleep(BUSY_POLL_S)  # the agent is finishing what it started; ask again
        except TimeoutError:
            return (DeviceAnswer.BUSY if outcome is not None else DeviceAnswer.NO_ANSWER), outcome
        except (TransportError, AdbError, DeviceError) as exc:
            log.warning("cannot ask the device", error=str(exc))
            return DeviceAnswer.NO_ANSWER, None

    async def _finish(self, outcome: pb.Outcome, detail: str) -> None:
        self.record.target_container_id = outcome.container_id
        timings = self.record.timings
        if "resumed_s" in timings:  # post-copy: the downtime ended at the resume, before the last page
            timings["downtime_s"] = timings["resumed_s"]
        elif self._frozen_at is not None:
            self._time("downtime_s", self._frozen_at)
        # "done" means all is settled: the source goes first (a crash in between is resolved as done too).
        await self._source_stopped()
        await self._finish_source()
        await self._set(S.DONE, detail)

    async def _finish_source(self) -> None:
        """Remove the stopped source (unless kept). It runs on the device already: a failure here is logged
        and recorded, never a reason to call the migration failed."""
        if self.record.keep_source:
            return
        try:
            inject("finish-source", self.record.container_name)
            await self.ctx.engine.remove_container(self.record.container_id, force=True)
        except Exception as exc:
            log.warning("could not remove the source container; remove it by hand", error=str(exc),
                        exc_info=not isinstance(exc, AndrocondError))
            what = str(exc) if isinstance(exc, AndrocondError) else f"{exc.__class__.__name__}: {exc}"
            self.record.error = f"the source container was not removed: {what}"

    async def rollback(self, reason: str) -> None:
        if self.record.state != S.ROLLING_BACK:
            await self._set(S.ROLLING_BACK, reason)
        await self._source_stopped()
        try:
            state = (await self.ctx.engine.inspect_container(self.record.container_id))["State"]
            if not state.get("Running"):
                await self.ctx.engine.start_container(self.record.container_id,
                                                      checkpoint=self.record.checkpoint_name)
        except EngineError as exc:
            self.record.error = (f"{reason}; restoring at the source also failed: {exc} (checkpoint "
                                 f"{self.record.checkpoint_name} kept: docker start --checkpoint "
                                 f"{self.record.checkpoint_name} {self.record.container_name})")
            await self._set(S.FAILED, self.record.error)
            return
        await self._set(S.ROLLED_BACK, reason)
        await self._clean_after_rollback()

    async def _clean_after_rollback(self) -> None:
        """The container runs again at the source: its checkpoint and containerd's extraction of it (the
        whole memory, twice) are not needed any more. Best effort: a leftover is logged, never a failure."""
        if not self._nonce:  # settled after a restart: where the engine keeps checkpoints, ask it again
            try:
                self._source_root = Path(str((await self.ctx.engine.info()).get("DockerRootDir") or
                                             self._source_root))
                self._nonce = await asyncio.to_thread(_read_nonce, self._checkpoint_dir())
            except (EngineError, OSError) as exc:
                log.warning("could not find the checkpoint to remove after the rollback", error=str(exc))
                return
        try:
            removed = await asyncio.to_thread(remove_extractions, self._nonce) if self._nonce else []
            await asyncio.to_thread(shutil.rmtree, self._checkpoint_dir(), True)
        except OSError as exc:
            log.warning("could not remove the checkpoint after the rollback", error=str(exc))
            return
        if removed:
            log.info("removed containerd's copy of the checkpoint", paths=[str(p) for p in removed])

    # --- the way there ---------------------------------------------------------------------------------------
    async def _migrate(self) -> None:
        record = self.record
        ctx = self.ctx
        t = self.timeouts
        device = ctx.settings.devices.get(record.device)
        if device is None:
            raise Rejected(f"unknown device {record.device!r}")
        await self._set(S.PREFLIGHT)
        t0 = time.monotonic()
        try:
            async with agent_endpoint(device, ctx.adb) as endpoint:
                async with _budget("preflight", t.preflight):
                    inspect = await self._inspect_source()
                    self._source_root = Path(str((await ctx.engine.info()).get("DockerRootDir") or
                                                 "/var/lib/docker"))
                    try:
                        link = await AgentConnection.open(endpoint, phase_timeouts(t))
                    except TransportError as exc:
                        raise Rejected(f"device {record.device} is not reachable: {exc}") from exc
                async with link:
                    async with _budget("preflight", t.preflight):
                        inject("preflight", self.record.container_name)
                        estimate = await self._preflight(link, inspect)
                        self.progress.bytes_expected = estimate
                        # The target container is made (and the image shipped) while the source still runs:
                        # none of that belongs in the downtime.
                        need_image = await self._prepare(link, estimate)
                    if need_image:
                        async with _budget("image", t.image):
                            await self._ship_image(link, str(inspect["Config"]["Image"]))
                    self._time("preflight_s", t0)
                    if self._cross is not None:
                        await self._notify(self._cross)
                    async with _budget("checkpoint", t.checkpoint):
                        await self._checkpoint(inspect)
                    async with _budget("stream", t.stream):
                        sent = await self._stream(link, inspect)
                    await self._commit(link, sent)
        except (AdbError, DeviceError) as exc:
            if record.state == S.PREFLIGHT:
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
        # First the configuration (bind mounts, host devices, host namespaces, …): the device's create body.
        self._plan = await self._target_plan(inspect)
        pids = await asyncio.to_thread(popcorn.task_tree, int(inspect["State"].get("Pid") or 0))
        needed_bits = await asyncio.to_thread(criu_compat.tasks_va_bits, pids)
        if link.hello.va_bits and needed_bits > link.hello.va_bits:
            raise Rejected(f"the container's memory reaches {needed_bits}-bit addresses, and device "
                           f"{self.record.device}'s kernel gives a process {link.hello.va_bits} bits (CRIU restores "
                           "every mapping at its address; an Android kernel built with 39-bit addresses cannot "
                           "hold an x86_64 stack)")
        lacking = criu_compat.restore_needs(await asyncio.to_thread(criu_compat.runc_options),
                                            list(link.hello.criu_runc_options))
        if lacking:
            raise Rejected(f"this host's CRIU dumps with {', '.join(lacking)} ({criu_compat.RUNC_CONF}), and "
                           f"device {self.record.device}'s does not restore with it, so its CRIU would refuse the "
                           f"images: add {' and '.join(lacking)} to {criu_compat.RUNC_CONF} on the device")
        sockets = await asyncio.to_thread(criu_compat.inet_sockets, pids)
        if sockets:
            await self._check_criu_sockets(link.hello, sockets)
        host_isa = platform.machine()
        if link.hello.isa != host_isa:
            self._cross = await self._cross_isa_preflight(link.hello, host_isa, pids)
        here = set(await asyncio.to_thread(criu_compat.absent_paths))
        self._recode_options = RecodeOptions(
            target="aarch64" if self._cross else host_isa,
            profile=self.ctx.settings.devices[self.record.device].profile,
            vdso=self._cross.vdso if self._cross else None,
            cgroup_v1_to_v2=link.hello.cgroup2 and not await asyncio.to_thread(criu_compat.cgroup_v2),
            target_criu=link.hello.criu_version,
            absent_mounts=tuple(p for p in link.hello.absent_masked_paths if p not in here))
        self._lazy = await self._decide_lazy(link.hello)
        upper = upper_dir(inspect)
        volumes = [source for _name, source in named_volumes(inspect)]
        disk = await asyncio.to_thread(lambda: sum(_tree_size(p) for p in [upper, *volumes]))
        memory = await self._memory_usage()
        needed = disk + memory + SPACE_MARGIN
        if needed > link.hello.free_bytes:
            raise Rejected(f"the device has {link.hello.free_bytes} bytes free; this container needs about "
                           f"{needed} (memory {memory}, files {disk})")
        return disk + memory

    async def _decide_lazy(self, hello: pb.AgentHello) -> bool:
        """Post-copy per the device's `lazy` setting: "true" refuses a move that cannot have it, "auto" takes
        it when every part can."""
        mode = self.ctx.settings.devices[self.record.device].lazy
        if mode == "false":
            return False
        why_not = []
        if not hello.lazy_pages:
            why_not.append(f"device {self.record.device} cannot restore lazily (it needs androcond's runtime in "
                           "its engine and userfaultfd in its kernel)")
        blocker = await asyncio.to_thread(criu_compat.page_server_blocker)
        if blocker:
            why_not.append(blocker)
        if self._cross is not None:
            why_not.append("post-copy across ISAs is not built (the page server would serve x86_64 pages)")
        if why_not and mode == "true":
            raise Rejected(f"post-copy (lazy = true) is not possible: {'; '.join(why_not)}")
        if why_not:
            log.info("post-copy off for this move", why="; ".join(why_not))
        return not why_not

    async def _check_criu_sockets(self, hello: pb.AgentHello, count: int) -> None:
        """A CRIU too old for its kernel fails on the first INET socket: say so now, not after the freeze."""
        here, release = await source_criu_version(), criu_compat.kernel_release()
        if not criu_compat.dumps_inet_sockets(here, release):
            raise Rejected(f"the container holds {count} network socket(s), and this host's "
                           f"{criu_compat.socket_advice(here, release)}")
        if not criu_compat.dumps_inet_sockets(hello.criu_version, hello.kernel_release):
            raise Rejected(f"the container holds {count} network socket(s), and device {self.record.device}'s "
                           f"{criu_compat.socket_advice(hello.criu_version, hello.kernel_release)}")

    async def _cross_isa_preflight(self, hello: pb.AgentHello, host_isa: str, pids: list[int]) -> CrossIsa:
        """x86_64 → aarch64 in the manner of criu-het: every task must be a Popcorn binary with both variants."""
        if (host_isa, hello.isa) != ("x86_64", "aarch64"):
            raise Rejected(f"cannot move from {host_isa} to a {hello.isa} device (only x86_64 → aarch64 is recoded)")
        if not hello.vdso:
            raise Rejected("the aarch64 device did not report its vdso (agent too old?)")
        try:
            executables = await asyncio.to_thread(preflight_processes, pids, "x86_64", "aarch64")
        except RecodeRefused as exc:
            raise Rejected(f"cannot move to an aarch64 device: {exc}") from exc
        return CrossIsa(pids, VdsoTemplate(hello.vdso, hello.vvar_size, hello.page_size), executables)

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

    def _lazy_dir(self) -> Path:
        """The device's pagemaps and pages files for post-copy (images/lazy.py)."""
        return self.ctx.settings.daemon.state_dir / "lazy" / self.record.id

    async def _recode(self, root: Path | None) -> Path:
        """The images as the device needs them: recoded for its ISA and/or its profile, else as dumped.
        `root` is the stopped container's root filesystem (a cross-ISA recode reads the binaries there)."""
        inject("recode", self.record.container_name)
        source = self._checkpoint_dir()
        options = replace(self._recode_options, root=root or Path("/"))
        if not stages_for(platform.machine(), options):
            return source
        t0 = time.monotonic()
        out = self._recode_dir()
        await asyncio.to_thread(shutil.rmtree, out, True)
        async with _budget("recode", self.timeouts.recode):
            report = await recode_async(source, out, options)
        if report.warnings:
            # Shown with the migration (`migrations show`, the journal), not only in the log.
            self._adjusted({"(recode)": {"why": "; ".join(report.warnings)}}, "recoder")
        self._time("recode_s", t0)
        return out

    async def _memory_usage(self) -> int:
        try:
            return memory_usage(await self.ctx.engine.stats(self.record.container_id))
        except EngineError as exc:
            log.info("no memory figure from the engine; estimating without it", error=str(exc))
            return 0

    async def _checkpoint(self, inspect: dict[str, Any]) -> None:
        await self._set(S.CHECKPOINTING)
        docker = self.ctx.settings.docker
        restart = str(((inspect.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "")
        fast = docker.checkpoint == "runc" and runc.usable(docker.runc_root, self.record.container_id, restart)
        self._frozen_at = time.monotonic()
        if fast:
            await runc.checkpoint(docker.runc_root, self.record.container_id, self._checkpoint_dir())
            self._time("checkpoint_s", self._frozen_at)
            # The engine learns of the stop a moment later (0.4 s for a task that frees 1 GiB as it exits); a
            # rollback must not find it "running" still. The images are complete and the tasks killed, so the
            # stream goes on meanwhile.
            self._source_stopping = asyncio.create_task(self._until_source_stopped(),
                                                        name=f"source-stopped-{self.record.id[:8]}")
        else:
            await self.ctx.engine.create_checkpoint(self.record.container_id, self.record.checkpoint_name)
            self._time("checkpoint_s", self._frozen_at)
        log.info("checkpointed", via="runc" if fast else "engine", seconds=self.record.timings["checkpoint_s"])
        # Marks this checkpoint, so a rollback can find containerd's copy of it again (and remove it).
        self._nonce = await asyncio.to_thread(place_nonce, self._checkpoint_dir())
        inject("checkpoint", self.record.container_name)

    async def _until_source_stopped(self) -> None:
        async with asyncio.timeout(self.timeouts.checkpoint):
            await self.ctx.engine.wait_stopped(self.record.container_id)

    async def _source_stopped(self) -> None:
        """Wait (bounded) until the engine has seen the checkpointed source stop. A failure is logged: the
        rollback then asks the engine itself, and removing the source forces it."""
        task, self._source_stopping = self._source_stopping, None
        if task is None:
            return
        try:
            await task
        except (EngineError, TimeoutError) as exc:
            log.warning("the engine did not report the checkpointed source stopped", error=str(exc))

    async def _forget_source_stopping(self) -> None:
        """At the end of run(): a migration that finished no longer needs it. One that did not (a second cancel
        while settling) leaves it to the settle task, which awaits it before restoring the source."""
        task = self._source_stopping
        if task is not None and self.record.finished:
            self._source_stopping = None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _checkpoint_dir(self) -> Path:
        return self._source_root / "containers" / self.record.container_id / "checkpoints" / \
            self.record.checkpoint_name

    async def _target_plan(self, inspect: dict[str, Any]) -> TargetPlan:
        """The device's create body; a field the device cannot honour refuses the migration here."""
        drivers = {}
        for name in ((inspect.get("NetworkSettings") or {}).get("Networks") or {}):
            if name not in container_config.BUILTIN_NETWORKS:
                drivers[name] = str((await self.ctx.engine.inspect_network(name)).get("Driver") or "bridge")
        device = self.ctx.settings.devices[self.record.device]
        try:
            return container_config.plan(inspect, allow_privileged=device.allow_privileged,
                                         network_drivers=drivers)
        except container_config.ConfigRefused as exc:
            raise Rejected(f"the container's configuration cannot move: {exc}") from exc

    def _adjusted(self, changes: dict[str, dict[str, Any]], where: str) -> None:
        for name, change in changes.items():
            log.warning("configuration adjusted", field=name, by=where, change_from=change.get("from"),
                        change_to=change.get("to"), why=change.get("why"))
        self.record.adjusted.update(changes)

    async def _prepare(self, link: AgentConnection, estimate: int) -> bool:
        """Begin on the device: it creates the target container now. True when it lacks the image."""
        target = self._plan
        assert target is not None, "preflight plans the create body"
        self._adjusted(target.adjusted, "daemon")
        config = target.body
        begin = pb.Begin(migration_id=self.record.id, container_name=self.record.container_name,
                         image=str(config["Image"]), create_config_json=json.dumps(config),
                         checkpoint_name=self.record.checkpoint_name, total_bytes=estimate, lazy=self._lazy)
        try:
            ack = await link.begin(begin)
        except AgentRefused as exc:
            raise Rejected(f"the device refused: {exc}") from exc
        if ack.adjusted_json:
            try:
                device_changes = json.loads(ack.adjusted_json)
            except ValueError:
                device_changes = {"(device)": {"why": "the agent sent unreadable adjustments"}}
            if isinstance(device_changes, dict):
                self._adjusted(device_changes, "device")
        await self.ctx.journal.save(self.record)
        return bool(ack.need_image)

    async def _ship_image(self, link: AgentConnection, image: str) -> None:
        log.info("shipping the image to the device", image=image)
        try:
            await link.send_files([OutgoingFile(pb.IMAGE_TAR, "image.tar",
                                                stream=lambda: self.ctx.engine.save_image(image))])
        except TransportError as exc:
            raise Rejected(f"shipping the image {image} to the device failed: {exc}") from exc

    async def _stream(self, link: AgentConnection, inspect: dict[str, Any]) -> int:
        """Send the checkpoint, the writable layer and the volumes (read now that the container is stopped);
        across ISAs also the target's variant of every task's binary, at the binary's path."""
        await self._set(S.STREAMING)
        inject("stream", self.record.container_name)
        t0 = time.monotonic()
        upper = upper_dir(inspect)
        volumes = named_volumes(inspect)
        cross = self._cross
        async with contextlib.AsyncExitStack() as mounted:
            # The root stays mounted until the binaries placed from it have been sent.
            root = await mounted.enter_async_context(container_root(inspect)) if cross is not None else None
            images = await self._recode(root)
            self._served = images

            def collect() -> list[OutgoingFile]:
                files = checkpoint_files(images)
                if self._lazy:  # the device gets the lazy pages later, from the page server
                    split = split_lazy(images, self._lazy_dir())
                    log.info("post-copy: pages left to the page server", lazy_bytes=split.lazy_bytes,
                             eager_bytes=split.eager_bytes)
                    files = replace_files(files, checkpoint_files(split.directory))
                files += tree_files(upper, pb.ROOTFS)
                if cross is not None and root is not None:
                    # Injected: the device keeps the x86_64 binary, as if it was never replaced (its CRIU refuses).
                    suffix = VARIANT_SUFFIX["x86_64" if armed("wrong-exe", self.record.container_name)
                                            else "aarch64"]
                    files = replace_files(files, executables_for_target(root, cross.executables, suffix))
                for name, source in volumes:
                    files += tree_files(source, pb.VOLUME, volume=name)
                return files

            try:
                files = await asyncio.to_thread(collect)
            except (LayerError, OSError) as exc:
                raise TransportError(f"cannot read what must move: {exc}") from exc
            await link.send_files(files, progress=self._on_progress)
        self.record.bytes_sent = self.progress.bytes_sent
        self._time("stream_s", t0)
        return len(files)

    def _on_progress(self, progress: Progress) -> None:
        progress.bytes_expected = self.progress.bytes_expected
        self.progress = progress

    async def _commit(self, link: AgentConnection, file_count: int) -> None:
        await self._set(S.RESTORING)
        inject("commit", self.record.container_name)
        t0 = time.monotonic()
        if self._lazy:
            outcome = await self._commit_lazy(link, file_count, t0)
        else:
            outcome = await link.commit(file_count)  # a broken link here is settled by asking the device
            self._time("restore_s", t0)
        if outcome.state != "running":
            raise DeviceDidNotRestore(f"the device did not restore the container: {outcome.error or outcome.state}")
        await self._finish(outcome, f"running on {self.record.device} as {outcome.container_id[:12]}")

    async def _commit_lazy(self, link: AgentConnection, file_count: int, t0: float) -> pb.Outcome:
        """Post-copy: the page server answers the device from the dump while the container runs there. The
        source's checkpoint stays the container until the device reports the last page: until then a failure
        rolls back at the source (and whatever the container did on the device is lost)."""
        try:
            server = await PageServer.start(self._served)
        except (PageServerError, OSError) as exc:
            raise TransportError(f"the page server did not start: {exc}") from exc

        async def resumed(outcome: pb.Outcome) -> None:
            self._time("restore_s", t0)
            if self._frozen_at is not None:  # the downtime, should the move end done
                self._time("resumed_s", self._frozen_at)
            await self._set(S.PAGING, f"running on {self.record.device} as {outcome.container_id[:12]}; "
                                      "its memory is arriving")
            inject("paging", self.record.container_name)

        try:
            outcome = await link.commit_lazy(file_count, server, resumed, self.timeouts.paging)
        finally:
            await server.close()
            # The memory, sent after the resume: in the live progress too, which the API shows (over the
            # journal's figure) until the migration has ended.
            self.progress.bytes_sent += server.bytes_served
            self.record.bytes_sent = self.progress.bytes_sent
        if outcome.state == "running" and self._frozen_at is not None:
            self._time("last_page_s", self._frozen_at)
        return outcome


async def resolve(ctx: Context, record: MigrationRecord) -> bool:
    """Settle a migration left unfinished (a previous daemon's crash, or one that ended unresolved): the
    same decision as in flight. True once it is finished."""
    migration = Migration(ctx, record)
    with log_context(migration_id=record.id, container=record.container_name, device=record.device):
        log.info("resolving an unfinished migration", state=str(record.state))
        if record.state == S.RESTORING:
            reason = record.error or "the outcome of the restore on the device was not known"
        elif record.state in FROZEN:
            reason = "the daemon stopped before the device was asked to restore"
        else:
            reason = "the daemon stopped before anything was frozen"
        finished = await migration.settle(reason)
        if finished and ctx.on_end is not None:
            ctx.on_end(record)
        return finished
