"""The migration state machine and the settle decision: every state × every answer of the device, and the
journal refusing what the table does not allow."""

from __future__ import annotations

from pathlib import Path

import pytest

from androcond.migration.journal import Journal, MigrationRecord, TransitionRefused
from androcond.migration.states import (
    FROZEN,
    TERMINAL,
    TRANSITIONS,
    Action,
    DeviceAnswer,
    MigrationState,
    allowed,
    decide,
    device_answer,
    needs_device,
)
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.codes import ErrorCode, OutcomeState

OS = OutcomeState

S = MigrationState
A = DeviceAnswer

# What must happen, written out by hand for every state and answer (not derived from the code under test).
EXPECTED: dict[MigrationState, dict[DeviceAnswer, Action]] = {
    S.REQUESTED: dict.fromkeys(A, Action.FAIL),
    S.PREFLIGHT: dict.fromkeys(A, Action.FAIL),
    S.CHECKPOINTING: dict.fromkeys(A, Action.ROLL_BACK),
    S.STREAMING: dict.fromkeys(A, Action.ROLL_BACK),
    S.RESTORING: {A.RUNNING: Action.FINISH, A.NOT_RUNNING: Action.ROLL_BACK, A.BUSY: Action.STAY_UNRESOLVED,
                  A.NO_ANSWER: Action.STAY_UNRESOLVED, A.NOT_ASKED: Action.STAY_UNRESOLVED},
    # Post-copy: running on the device, pages still arriving. Only the device's answer settles it.
    S.PAGING: {A.RUNNING: Action.FINISH, A.NOT_RUNNING: Action.ROLL_BACK, A.BUSY: Action.STAY_UNRESOLVED,
               A.NO_ANSWER: Action.STAY_UNRESOLVED, A.NOT_ASKED: Action.STAY_UNRESOLVED},
    S.ROLLING_BACK: dict.fromkeys(A, Action.ROLL_BACK),
    S.DONE: dict.fromkeys(A, Action.NOTHING),
    S.ROLLED_BACK: dict.fromkeys(A, Action.NOTHING),
    S.REJECTED: dict.fromkeys(A, Action.NOTHING),
    S.FAILED: dict.fromkeys(A, Action.NOTHING),
}


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("answer", list(A))
def test_decision_table(state: MigrationState, answer: DeviceAnswer) -> None:
    assert decide(state, answer) == EXPECTED[state][answer]


def test_only_after_the_commit_is_the_device_asked() -> None:
    assert [s for s in S if needs_device(s)] == [S.RESTORING, S.PAGING]


@pytest.mark.parametrize(("outcome", "answer"), [(OS.RUNNING, A.RUNNING), (OS.RECEIVING, A.BUSY),
                                                 (OS.RESTORING, A.BUSY), (OS.PAGING, A.BUSY),
                                                 (OS.FAILED, A.NOT_RUNNING),
                                                 (OS.ABORTED, A.NOT_RUNNING), (OS.UNKNOWN, A.NOT_RUNNING)])
def test_agent_outcomes_map_to_answers(outcome: OutcomeState, answer: DeviceAnswer) -> None:
    assert device_answer(outcome) == answer


def test_every_outcome_state_and_error_code_round_trips_through_the_wire() -> None:
    assert [OutcomeState.of(s.wire) for s in OutcomeState] == list(OutcomeState)
    assert [ErrorCode.of(c.wire) for c in ErrorCode] == list(ErrorCode)
    # Every value the proto declares has its name here (a new one must be added on both sides).
    assert len(pb.OutcomeState.keys()) == len(OutcomeState) and len(pb.ErrorCode.keys()) == len(ErrorCode)


def test_a_finished_migration_never_moves() -> None:
    assert {S.DONE, S.ROLLED_BACK, S.REJECTED, S.FAILED} == TERMINAL
    for terminal in TERMINAL:
        assert [s for s in S if s != terminal and allowed(terminal, s)] == []


def test_after_the_freeze_failure_goes_through_a_rollback() -> None:
    for state in FROZEN - {S.ROLLING_BACK}:
        assert S.FAILED not in TRANSITIONS[state] and S.REJECTED not in TRANSITIONS[state]
        assert S.ROLLING_BACK in TRANSITIONS[state]
    assert not allowed(S.STREAMING, S.DONE)  # done only from restoring: the device confirmed it


def test_every_state_is_reachable_from_requested() -> None:
    seen, todo = {S.REQUESTED}, [S.REQUESTED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(S)


def _record(state: MigrationState = S.REQUESTED) -> MigrationRecord:
    return MigrationRecord(id="m1", container_id="c1", container_name="web", device="pixel", origin="api",
                           state=state, checkpoint_name="androcond-m1")


async def test_the_journal_refuses_an_illegal_transition(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    try:
        record = _record()
        await journal.create(record)
        for state in (S.PREFLIGHT, S.CHECKPOINTING, S.STREAMING, S.RESTORING, S.DONE):
            record.state = state
            await journal.save(record)
        record.timings["total_s"] = 1.0
        await journal.save(record)  # staying done (timings) is no transition
        record.state = S.FAILED
        with pytest.raises(TransitionRefused, match="done → failed"):
            await journal.save(record)
        stored = await journal.get("m1")
        assert stored is not None and stored.state == S.DONE and stored.timings == {"total_s": 1.0}
        assert [s for s, _at, _d in await journal.transitions("m1")] == [
            "requested", "preflight", "checkpointing", "streaming", "restoring", "done"]
    finally:
        await journal.close()


async def test_the_journal_refuses_to_create_a_record_in_flight(tmp_path: Path) -> None:
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    try:
        with pytest.raises(TransitionRefused):
            await journal.create(_record(S.STREAMING))
        assert await journal.get("m1") is None
    finally:
        await journal.close()
