"""Settling: bring a container to exactly once after whatever stopped its migration — one decision of (state,
what the target says) (states.decide), the same in flight and for a record a crashed daemon left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..config import DeviceSettings
from ..engine import EngineError
from ..errors import AndrocondError
from ..link.ssh import TransportError
from ..logging import get_logger
from ..protocol import protocol_pb2 as pb
from ..protocol.codes import OutcomeState
from .plan import Frozen
from .recorder import Recorder
from .roles import LinkFactory, Source
from .states import Action, DeviceAnswer, MigrationState, decide, device_answer, needs_device

log = get_logger(__name__)
S = MigrationState
# How often a target that is still busy with a migration (receiving, restoring) is asked again.
BUSY_POLL_S = 0.2

AskTarget = Callable[[], Awaitable[tuple[DeviceAnswer, pb.Outcome | None]]]


class Settler:
    """Settles one migration through its source (restore, remove) and its target (what it runs)."""

    def __init__(self, recorder: Recorder, source: Source, ask_target: AskTarget) -> None:
        self.recorder = recorder
        self.source = source
        self._ask_target = ask_target
        self.frozen: Frozen | None = None  # set by the freeze: where the downtime began

    async def settle(self, reason: str, *, rejected: bool = False, known: DeviceAnswer | None = None) -> bool:
        """Bring the container to exactly once after `reason`; True once the migration is finished."""
        record = self.recorder.record
        state = record.state
        answer, outcome = DeviceAnswer.NOT_ASKED, None
        if needs_device(state):
            if known is not None:
                answer = known
            else:
                answer, outcome = await self._ask_target()
        action = decide(state, answer)
        log.info("settling", state=str(state), device_says=str(answer), action=str(action), reason=reason)
        if action == Action.NOTHING:
            return True
        if action == Action.FAIL:
            record.error = reason
            await self.recorder.transition(S.REJECTED if rejected else S.FAILED, reason)
        elif action == Action.ROLL_BACK:
            record.error = reason
            await self.rollback(reason)
        elif action == Action.FINISH:
            assert outcome is not None
            await self.finish(outcome, "the device confirmed the restore after: " + reason)
        else:
            record.error = f"{reason}; the device could not say whether it runs the container ({answer})"
            await self.recorder.save(record.error)
            log.error("migration unresolved; will ask the device again", error=record.error)
            return False
        return True

    async def finish(self, outcome: pb.Outcome, detail: str) -> None:
        """It runs on the target: the source goes (unless kept), then "done" — a crash in between is resolved
        as done too."""
        record = self.recorder.record
        record.target_container_id = outcome.container_id
        timings = record.timings
        if "resumed_s" in timings:  # post-copy: the downtime ended at the resume, before the last page
            timings["downtime_s"] = timings["resumed_s"]
        elif self.frozen is not None:
            self.recorder.time("downtime_s", self.frozen.at)
        await self.source.stopped()
        await self._remove_source()
        await self.recorder.transition(S.DONE, detail)

    async def _remove_source(self) -> None:
        """It runs on the target already: a failure here is logged and recorded, never a reason to call the
        migration failed."""
        record = self.recorder.record
        if record.keep_source:
            return
        try:
            await self.source.remove()
        except Exception as exc:
            log.warning("could not remove the source container; remove it by hand", error=str(exc),
                        exc_info=not isinstance(exc, AndrocondError))
            what = str(exc) if isinstance(exc, AndrocondError) else f"{exc.__class__.__name__}: {exc}"
            record.error = f"the source container was not removed: {what}"

    async def rollback(self, reason: str) -> None:
        record = self.recorder.record
        if record.state != S.ROLLING_BACK:
            await self.recorder.transition(S.ROLLING_BACK, reason)
        try:
            await self.source.restore()
        except EngineError as exc:
            record.error = (f"{reason}; restoring at the source also failed: {exc} (checkpoint "
                            f"{record.checkpoint_name} kept: docker start --checkpoint "
                            f"{record.checkpoint_name} {record.container_name})")
            await self.recorder.transition(S.FAILED, record.error)
            return
        # Cleaned before the record says so: a crash in between is settled again on restart (the restore finds
        # it running) and cleans then; after "rolled-back" nothing would.
        await self.source.clean_after_rollback()
        await self.recorder.transition(S.ROLLED_BACK, reason)


async def ask_target(links: LinkFactory, device: DeviceSettings | None, migration_id: str,
                     deadline_s: float) -> tuple[DeviceAnswer, pb.Outcome | None]:
    """What the target says of this migration; asks again (bounded) while it is still receiving or restoring."""
    if device is None:
        log.error("the device is no longer configured; cannot ask it")
        return DeviceAnswer.NO_ANSWER, None
    outcome: pb.Outcome | None = None
    try:
        async with asyncio.timeout(deadline_s), links(device) as link:
            while True:
                outcome = await link.query(migration_id)
                answer = device_answer(OutcomeState.of(outcome.state))
                if answer != DeviceAnswer.BUSY:
                    return answer, outcome
                await asyncio.sleep(BUSY_POLL_S)  # the target is finishing what it started; ask again
    except TimeoutError:
        return (DeviceAnswer.BUSY if outcome is not None else DeviceAnswer.NO_ANSWER), outcome
    except TransportError as exc:
        log.warning("cannot ask the device", error=str(exc))
        return DeviceAnswer.NO_ANSWER, None
