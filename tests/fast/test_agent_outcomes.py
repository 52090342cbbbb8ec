"""Outcome records name the agent process that wrote them; stale ones are told apart (no test bed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from androcond.agent.outcomes import OutcomeRecord, OutcomeStore, ProcessIdentity
from androcond.protocol.codes import OutcomeState


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_process_identity_reads_the_start_time() -> None:
    me = ProcessIdentity.current()
    assert me.pid == os.getpid()
    assert me.start > 0
    assert me.alive()
    assert not ProcessIdentity(me.pid, me.start + 1).alive(), "a reused pid is another process"
    assert ProcessIdentity.of(dead_pid()) is None
    assert not ProcessIdentity(0, 0).alive()


async def test_put_stamps_the_owner_and_get_reads_it_back(tmp_path: Path) -> None:
    store = OutcomeStore(tmp_path)
    await store.put(OutcomeRecord("m-1", OutcomeState.RECEIVING))
    record = await store.get("m-1")
    assert record is not None
    assert record.owner == ProcessIdentity.current()
    assert not record.is_stale(store.owner)
    assert await store.get("m-unknown") is None
    assert [p.name for p in tmp_path.iterdir()] == ["m-1.json"]


@pytest.mark.parametrize("state", [OutcomeState.RECEIVING, OutcomeState.RESTORING])
def test_in_flight_records_of_dead_or_reused_owners_are_stale(state: OutcomeState) -> None:
    me = ProcessIdentity.current()
    other = ProcessIdentity.of(1)  # init: alive, and not this process
    dead = OutcomeRecord("m", state, owner_pid=dead_pid(), owner_start=1)
    reused = OutcomeRecord("m", state, owner_pid=me.pid, owner_start=me.start + 1)
    assert dead.is_stale(me)
    assert reused.is_stale(me)
    assert not OutcomeRecord("m", state, owner_pid=me.pid, owner_start=me.start).is_stale(me)
    if other is not None:  # a live process other than this one: its session is not ours to settle
        assert not OutcomeRecord("m", state, owner_pid=other.pid, owner_start=other.start).is_stale(me)


@pytest.mark.parametrize("state", [OutcomeState.RUNNING, OutcomeState.FAILED, OutcomeState.ABORTED])
def test_final_records_are_never_stale(state: OutcomeState) -> None:
    assert not OutcomeRecord("m", state, owner_pid=dead_pid(), owner_start=1).is_stale(ProcessIdentity.current())


async def test_old_files_without_owner_still_load(tmp_path: Path) -> None:
    (tmp_path / "old-1.json").write_text(json.dumps({
        "migration_id": "old-1", "state": "restoring", "container_id": "abc", "error": "",
        "restore_seconds": 0.0, "bytes_received": 5}))
    (tmp_path / "old-2.json").write_text(json.dumps({"migration_id": "old-2", "state": "running",
                                                     "a_field_from_a_newer_agent": 1}))
    store = OutcomeStore(tmp_path)
    old = await store.get("old-1")
    assert old is not None
    assert (old.owner_pid, old.container_id, old.bytes_received) == (0, "abc", 5)
    assert old.is_stale(store.owner)
    newer = await store.get("old-2")
    assert newer is not None
    assert newer.state == "running"
    assert [r.migration_id for r in await store.in_flight()] == ["old-1"]


async def test_temporary_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    me = ProcessIdentity.current()
    orphan = tmp_path / f"m-2.json.{dead_pid()}-1.tmp"
    orphan.write_text("{")
    live = tmp_path / f"m-3.json.{me.pid}-{me.start}.tmp"
    live.write_text("{")
    await OutcomeStore(tmp_path).in_flight()
    assert not orphan.exists()
    assert live.exists(), "a live writer's file is left alone"
