"""The resolver asks again with backoff until a migration is settled, and leaves alone what the scheduler
runs; the engine lock admits one daemon per engine and dies with its holder."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from androcond.daemon import resolver as resolver_module
from androcond.daemon.engine_lock import EngineLock, EngineTaken, engine_identity
from androcond.daemon.resolver import Resolver
from androcond.migration.journal import Journal, MigrationRecord
from androcond.migration.states import MigrationState
from androcond.pipeline import Context, new_record


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    yield journal
    await journal.close()


async def unfinished(journal: Journal, container: str) -> MigrationRecord:
    record = new_record(container * 8, container, "pixel", "api", False)
    await journal.create(record)
    for state in (MigrationState.PREFLIGHT, MigrationState.CHECKPOINTING, MigrationState.STREAMING,
                  MigrationState.RESTORING):
        record.state = state
        await journal.save(record)
    return record


async def test_unresolved_migrations_are_asked_again_with_backoff(journal: Journal,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    stuck = await unfinished(journal, "a")
    busy = await unfinished(journal, "b")  # in the scheduler's hands: not the resolver's business
    asked: list[tuple[str, float]] = []
    settled = asyncio.Event()

    async def fake_resolve(_ctx: Context, record: MigrationRecord) -> bool:
        asked.append((record.id, asyncio.get_running_loop().time()))
        if len(asked) < 4:
            return False
        settled.set()
        return True

    monkeypatch.setattr(resolver_module, "resolve", fake_resolve)
    monkeypatch.setattr(resolver_module, "FIRST_RETRY_S", 0.05)
    resolver = Resolver(None, journal, lambda mid: mid == busy.id, backoff_max_s=0.15)  # type: ignore[arg-type]
    task = asyncio.create_task(resolver.run())
    try:
        async with asyncio.timeout(10):
            await settled.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert {mid for mid, _t in asked} == {stuck.id}
    gaps = [later - earlier for (_a, earlier), (_b, later) in itertools.pairwise(asked)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.15 - 0.01, gaps  # doubling, capped
    assert resolver.pending == 0


async def test_a_failing_resolve_does_not_stop_the_resolver(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    await unfinished(journal, "a")
    calls = 0
    again = asyncio.Event()

    async def broken(_ctx: Context, _record: MigrationRecord) -> bool:
        nonlocal calls
        calls += 1
        if calls >= 2:
            again.set()
        raise RuntimeError("a bug while resolving")

    monkeypatch.setattr(resolver_module, "resolve", broken)
    monkeypatch.setattr(resolver_module, "FIRST_RETRY_S", 0.01)
    task = asyncio.create_task(Resolver(None, journal, lambda _m: False, 0.05).run())  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            await again.wait()
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_one_daemon_per_engine(tmp_path: Path) -> None:
    first = EngineLock("unix:///run/docker.sock", tmp_path)
    first.acquire(Path("/etc/androcond/a.toml"), "unix:/run/a.sock")
    try:
        with pytest.raises(EngineTaken, match=f"pid {os.getpid()}, config /etc/androcond/a.toml"):
            EngineLock("unix:///run/docker.sock", tmp_path).acquire(None, "unix:/run/b.sock")
        EngineLock("unix:///run/other.sock", tmp_path).acquire(None, "x")  # another engine is fine
    finally:
        first.release()
    EngineLock("unix:///run/docker.sock", tmp_path).acquire(None, "unix:/run/b.sock")


def test_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from androcond.daemon.engine_lock import EngineLock; "
        f"EngineLock('tcp://engine:2375', Path({str(tmp_path)!r})).acquire(None, 'x'); "
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(EngineTaken, match=f"pid {holder.pid}"):
            EngineLock("tcp://engine:2375/", tmp_path).acquire(None, "y")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    EngineLock("tcp://engine:2375", tmp_path).acquire(None, "y")


def test_the_same_engine_spelled_two_ways(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "docker.sock").touch()
    (tmp_path / "var-run").symlink_to(tmp_path / "run")
    assert engine_identity(f"unix://{tmp_path}/var-run/docker.sock") == f"unix://{tmp_path}/run/docker.sock"
