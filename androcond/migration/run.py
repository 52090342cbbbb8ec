"""One migration, end to end: preflight → (image) → notify → freeze → stream → commit → done, or a rollback
that restores the container at the source. Every transition is journaled before it takes effect.

Exactly once: the source's checkpoint is kept until the target confirms the container runs there. Whatever a
migration raises — our errors, a library's, a bug — :meth:`Migration.run` contains it and settles the container
with one decision (:class:`~androcond.migration.settle.Settler`), the same one :func:`resolve` applies after a
restart: nothing frozen → failed; frozen, no commit sent → roll back at the source; commit sent → ask the
target, and without its answer stay unresolved (the daemon's resolver asks again), never guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from dataclasses import replace

from ..errors import AndrocondError
from ..link.payload import OutgoingFile, Progress
from ..link.ssh import AgentRefused, TransportError
from ..logging import get_logger, log_context
from ..protocol import protocol_pb2 as pb
from ..protocol.codes import OutcomeState
from . import preflight
from .commit import strategy
from .container_config import home_body
from .context import Context
from .errors import DeviceDidNotRestore, Rejected, budget
from .journal import HOME, MigrationRecord
from .plan import Plan
from .recorder import Recorder
from .roles import Source, TargetLink
from .settle import Settler, ask_target
from .states import FROZEN, DeviceAnswer, MigrationState
from .stream import Workspace, relays, stream

log = get_logger(__name__)
S = MigrationState


def settler_for(ctx: Context, record: MigrationRecord, source: Source, recorder: Recorder) -> Settler:
    device = ctx.place(record.device)
    ask = functools.partial(ask_target, ctx.connect, device, record.id, ctx.settings.timeouts.settle)
    return Settler(recorder, source, ask)


class Migration:
    def __init__(self, ctx: Context, record: MigrationRecord) -> None:
        self.ctx = ctx
        self.record = record
        self.timeouts = ctx.settings.timeouts
        self.progress = Progress()
        self.recorder = Recorder(record, ctx.journal, ctx.on_change)
        self.source = ctx.source_for(record)
        self.settler = settler_for(ctx, record, self.source, self.recorder)
        self.workspace = Workspace.of(ctx.settings.daemon.state_dir, record.id)

    # --- the supervisor ------------------------------------------------------------------------------------
    async def run(self) -> MigrationRecord:
        """Never raises but CancelledError: any failure ends in a settled (or knowingly unresolved) record."""
        with log_context(migration_id=self.record.id, container=self.record.container_name,
                         device=self.record.device):
            try:
                await self._migrate()
            except asyncio.CancelledError:
                # Shutdown or an outside cancel: never leave the container frozen. The settle task is owned by
                # the context's task owner, so a second cancel cannot orphan it half-way.
                task = self.ctx.background.spawn(self._settle_safely("cancelled (daemon shutting down)"),
                                                 name=f"settle-{self.record.id[:8]}")
                await asyncio.shield(task)
                raise
            except Exception as exc:
                await self._contain(exc)
            finally:
                await self.source.forget_stopping()
                await self.workspace.remove()
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
            await self.settler.settle(reason, rejected=rejected, known=known)
        except Exception as exc:  # the journal or the engine failed while settling: the resolver retries
            log.error("could not settle the migration; the resolver will", error=str(exc), exc_info=exc)
            self.record.error = f"{reason}; settling failed: {exc}"

    async def _end(self) -> None:
        try:
            await self.recorder.save()
        except Exception as exc:
            log.error("could not save the migration's timings", error=str(exc))
        if self.ctx.on_end is not None:
            try:
                self.ctx.on_end(self.record)
            except Exception as exc:
                log.error("migration end hook failed", error=str(exc), exc_info=exc)

    # --- the phases ----------------------------------------------------------------------------------------
    async def _migrate(self) -> None:
        record, t = self.record, self.timeouts
        device = self.ctx.target_of(record)
        if device is None:
            raise Rejected(f"unknown device {record.device!r}")
        await self.recorder.transition(S.PREFLIGHT)
        t0 = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            async with budget("preflight", t.preflight):
                inspect = await self.source.inspect()
                try:
                    link = await stack.enter_async_context(self.ctx.connect(device))
                except TransportError as exc:
                    raise Rejected(f"device {record.device} is not reachable: {exc}") from exc
            async with budget("preflight", t.preflight):
                self.ctx.faults.inject("preflight", record.container_name)
                plan = await preflight.plan(self.source, device, inspect, link.hello)
                relay = relays(plan)
                self.progress.bytes_expected = plan.estimate
                # The target container is made (and the image shipped) while the source still runs: none of
                # that belongs in the downtime.
                need_image = await self._prepare(link, plan)
            if need_image:
                async with budget("image", t.image):
                    await self._ship_image(link, plan)
            self.recorder.time("preflight_s", t0)
            if plan.cross is not None:
                n0 = time.monotonic()
                regsets = await self.source.notify(plan.cross.pids, plan.cross.target)
                plan = replace(plan, recode=replace(plan.recode, regsets=regsets))
                self.recorder.time("notify_s", n0)
            async with budget("checkpoint", t.checkpoint):
                await self.recorder.transition(S.CHECKPOINTING)
                frozen = await self.source.freeze(plan.inspect, flat=plan.flat, relay=relay,
                                                  readout=plan.native_resume)
                self.settler.frozen = frozen
                self.recorder.time("checkpoint_s", frozen.at)
                record.timings.update({name: round(seconds, 3) for name, seconds in frozen.steps.items()})
                if frozen.notes:
                    self.recorder.adjusted({"(readout)": {"why": "; ".join(frozen.notes)}}, "device")
                log.info("checkpointed", via=frozen.via, seconds=record.timings["checkpoint_s"])
                self.ctx.faults.inject("checkpoint", record.container_name)
            async with budget("stream", t.stream):
                await self.recorder.transition(S.STREAMING)
                shipped = await stream(self.source, link, plan, frozen, workspace=self.workspace,
                                       recorder=self.recorder, recode_s=t.recode, on_progress=self._on_progress,
                                       faults=self.ctx.faults)
            await self.recorder.transition(S.RESTORING)
            self.ctx.faults.inject("commit", record.container_name)
            commit = strategy(plan.lazy, t.paging, self.ctx.faults, target_criu=plan.recode.target_criu,
                              work=self.workspace.lazy)
            outcome = await commit.commit(link, shipped, frozen, self.recorder, self.progress)
            if outcome.state != pb.OUTCOME_RUNNING:
                raise DeviceDidNotRestore(
                    f"{'the host' if record.device == HOME else 'the device'} did not restore the container: "
                    f"{outcome.error or OutcomeState.of(outcome.state)}")
            await self.settler.finish(outcome, f"running on {record.device} as {outcome.container_id[:12]}")

    async def _prepare(self, link: TargetLink, plan: Plan) -> bool:
        """Begin on the target: it creates the target container now. True when it lacks the image."""
        self.recorder.adjusted(plan.target.adjusted, "daemon")
        if not self.record.way_back:  # what the way back restores: the container as it was here
            self.record.home_config = home_body(plan.target, plan.inspect)
        config = plan.target.body
        begin = pb.Begin(migration_id=self.record.id, container_name=self.record.container_name,
                         image=str(config["Image"]), create_config_json=json.dumps(config),
                         checkpoint_name=self.record.checkpoint_name, total_bytes=plan.estimate, lazy=plan.lazy,
                         emulate=plan.emulated is not None, native_plan=plan.native_resume)
        if plan.emulated is not None and plan.emulated.notes:
            self.recorder.adjusted({"(emulation)": {"why": "; ".join(plan.emulated.notes)}}, "daemon")
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
                self.recorder.adjusted(device_changes, "device")
        await self.recorder.save()
        return bool(ack.need_image)

    async def _ship_image(self, link: TargetLink, plan: Plan) -> None:
        image = self.source.image_name(plan.inspect)
        log.info("shipping the image to the device", image=image)
        try:
            await link.send_files([OutgoingFile(pb.IMAGE_TAR, "image.tar",
                                                stream=lambda: self.source.save_image(image))])
        except TransportError as exc:
            raise Rejected(f"shipping the image {image} to the device failed: {exc}") from exc

    def _on_progress(self, progress: Progress) -> None:
        progress.bytes_expected = self.progress.bytes_expected
        self.progress = progress


async def resolve(ctx: Context, record: MigrationRecord) -> bool:
    """Settle a migration left unfinished (a previous daemon's crash, or one that ended unresolved): the same
    decision as in flight. True once it is finished."""
    source = ctx.source_for(record)
    settler = settler_for(ctx, record, source, Recorder(record, ctx.journal, ctx.on_change))
    with log_context(migration_id=record.id, container=record.container_name, device=record.device):
        log.info("resolving an unfinished migration", state=str(record.state))
        if record.state == S.RESTORING:
            reason = record.error or "the outcome of the restore on the device was not known"
        elif record.state in FROZEN:
            reason = "the daemon stopped before the device was asked to restore"
        else:
            reason = "the daemon stopped before anything was frozen"
        finished = await settler.settle(reason)
        if finished:
            # What the crashed run kept for it (a page server's work directory, pulled files): no longer needed.
            await Workspace.of(ctx.settings.daemon.state_dir, record.id).remove()
        if finished and ctx.on_end is not None:
            ctx.on_end(record)
        return finished
