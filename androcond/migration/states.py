"""A migration's states, the transitions allowed between them, and the one decision that settles a migration
that stopped on its way: in flight (an error) and after a restart (the journal) alike.

Pure: no I/O here, so every state × every answer of the device is tested without a bed (tests/fast).
"""

from __future__ import annotations

from enum import StrEnum

from ..protocol.codes import IN_FLIGHT, OutcomeState


class MigrationState(StrEnum):
    REQUESTED = "requested"
    PREFLIGHT = "preflight"
    CHECKPOINTING = "checkpointing"
    STREAMING = "streaming"
    RESTORING = "restoring"
    PAGING = "paging"  # post-copy: it runs on the device, its memory still arriving from the source
    DONE = "done"
    ROLLING_BACK = "rolling-back"
    ROLLED_BACK = "rolled-back"
    REJECTED = "rejected"
    FAILED = "failed"


S = MigrationState

# Where each state may go next. A terminal state goes nowhere: a finished migration is never reopened.
TRANSITIONS: dict[MigrationState, frozenset[MigrationState]] = {
    S.REQUESTED: frozenset({S.PREFLIGHT, S.REJECTED, S.FAILED}),
    S.PREFLIGHT: frozenset({S.CHECKPOINTING, S.REJECTED, S.FAILED}),
    # From the freeze on, failure means a rollback at the source (or, after the commit, asking the device).
    S.CHECKPOINTING: frozenset({S.STREAMING, S.ROLLING_BACK}),
    S.STREAMING: frozenset({S.RESTORING, S.ROLLING_BACK}),
    S.RESTORING: frozenset({S.DONE, S.PAGING, S.ROLLING_BACK}),
    # Until the last page has arrived the source's checkpoint is the container: a failure rolls back there.
    S.PAGING: frozenset({S.DONE, S.ROLLING_BACK}),
    # The source could not be restarted: failed, with the checkpoint kept and named in the error.
    S.ROLLING_BACK: frozenset({S.ROLLED_BACK, S.FAILED}),
    S.DONE: frozenset(),
    S.ROLLED_BACK: frozenset(),
    S.REJECTED: frozenset(),
    S.FAILED: frozenset(),
}
# States a record may be created in: a request, or a label refused before anything was asked of anyone.
INITIAL = frozenset({S.REQUESTED, S.REJECTED})
TERMINAL = frozenset(state for state, nexts in TRANSITIONS.items() if not nexts)
# States in which the source container may be frozen (checkpointed and stopped).
FROZEN = frozenset({S.CHECKPOINTING, S.STREAMING, S.RESTORING, S.PAGING, S.ROLLING_BACK})


def allowed(current: MigrationState, new: MigrationState) -> bool:
    """Staying in a state is no transition (a save of timings or an error); anything else must be listed."""
    return new == current or new in TRANSITIONS[current]


class IllegalTransition(ValueError):
    def __init__(self, migration_id: str, current: str, new: str) -> None:
        super().__init__(f"migration {migration_id}: {current} → {new} is not a legal transition")
        self.migration_id = migration_id
        self.current = current
        self.new = new


class DeviceAnswer(StrEnum):
    """What the agent said about a migration (its outcome state), reduced to what the decision needs."""

    RUNNING = "running"          # it restored the container and it runs
    NOT_RUNNING = "not-running"  # failed, aborted, or it never heard of the migration
    BUSY = "busy"                # still receiving, restoring or paging: ask again
    NO_ANSWER = "no-answer"      # unreachable, or it did not answer in time
    NOT_ASKED = "not-asked"      # the decision does not need the device


def device_answer(outcome_state: OutcomeState) -> DeviceAnswer:
    if outcome_state == OutcomeState.RUNNING:
        return DeviceAnswer.RUNNING
    if outcome_state in IN_FLIGHT:
        return DeviceAnswer.BUSY
    return DeviceAnswer.NOT_RUNNING


class Action(StrEnum):
    FINISH = "finish"              # runs on the device: remove (or keep) the source, mark done
    ROLL_BACK = "roll-back"        # restore at the source from its checkpoint
    FAIL = "fail"                  # nothing was frozen: the container never stopped at the source
    STAY_UNRESOLVED = "unresolved"  # only the device can tell, and it has not: ask again later
    NOTHING = "nothing"            # already finished


def needs_device(state: MigrationState) -> bool:
    """Only after the commit may the device run the container; before it, the agent discards what it got."""
    return state in (S.RESTORING, S.PAGING)


def decide(state: MigrationState, answer: DeviceAnswer) -> Action:
    """The container must end up running exactly once: never restore at the source on a guess."""
    if state in TERMINAL:
        return Action.NOTHING
    if state not in FROZEN:
        return Action.FAIL
    if not needs_device(state):
        return Action.ROLL_BACK
    if answer == DeviceAnswer.RUNNING:
        return Action.FINISH
    if answer == DeviceAnswer.NOT_RUNNING:
        return Action.ROLL_BACK
    return Action.STAY_UNRESOLVED
