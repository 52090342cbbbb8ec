"""The way back's pure parts: the configuration a container gets at home again, where the journal says each
container runs (and an older journal upgraded in place), and the link's bounded buffer for what an agent
sends."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from androcond.link.ssh import TransportError
from androcond.link.transport import REPLIES_LIMIT
from androcond.migration import container_config
from androcond.migration.container_config import TargetPlan
from androcond.migration.emulate import target_plan
from androcond.migration.journal import HOME, Journal, MigrationRecord
from androcond.migration.plan import Emulated
from androcond.migration.states import MigrationState
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.wire import encode_frame

from .test_transport_reader import Channel, link_on

INSPECT: dict[str, Any] = {
    "Id": "c0ffee",
    "Config": {"Image": "counter:1", "Cmd": ["/bin/counter"], "Env": ["A=1"],
               "Labels": {"androcond.migrate": "pixel", "team": "edge"}},
    "HostConfig": {"CgroupParent": "/mine", "NetworkMode": "default",
                   "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0}},
}


def test_home_body_gives_back_what_the_way_out_changed_and_the_labels() -> None:
    out = container_config.plan(INSPECT)
    assert "CgroupParent" not in out.body["HostConfig"] and "androcond.migrate" not in out.body["Labels"]
    emulated = target_plan(out, Emulated("/usr/bin/qemu-x86_64", "10.0.2"))
    assert emulated.body["Entrypoint"] != out.body.get("Entrypoint")
    home = container_config.home_body(emulated, INSPECT)
    assert home["Labels"] == INSPECT["Config"]["Labels"]
    assert home["HostConfig"]["CgroupParent"] == "/mine"
    assert "Entrypoint" not in home and home["Cmd"] == ["/bin/counter"]
    assert "Init" not in home["HostConfig"]  # unset at home: left unset, not False
    assert home["Env"] == ["A=1"] and home["Image"] == "counter:1"
    assert emulated.body["HostConfig"].get("Init") is True, "the target's body is not changed"


def test_home_body_without_adjustments_is_the_body_with_its_labels() -> None:
    body = {"Image": "x", "Labels": {"team": "edge"}, "HostConfig": {"Memory": 5}}
    home = container_config.home_body(TargetPlan(body), {"Config": {"Labels": {"androcond.migrate": "p"}}})
    assert home == {**body, "Labels": {"androcond.migrate": "p"}}


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    yield journal
    await journal.close()


async def _landed(journal: Journal, name: str, device: str, source: str = HOME) -> MigrationRecord:
    record = MigrationRecord(id=f"{name}-{device}-{source}", container_id="c", container_name=name, device=device,
                             origin="api", source=source, home_config={"Image": "x"} if source == HOME else {})
    await journal.create(record)
    for state in (MigrationState.PREFLIGHT, MigrationState.CHECKPOINTING, MigrationState.STREAMING,
                  MigrationState.RESTORING, MigrationState.DONE):
        record.state = state
        await journal.save(record)
    return record


async def test_where_each_container_runs_is_its_last_move_that_landed(journal: Journal) -> None:
    await _landed(journal, "web", "pixel")
    back = await _landed(journal, "web", HOME, source="pixel")
    await _landed(journal, "db", "pixel")
    failed = MigrationRecord(id="db-again", container_id="d", container_name="db", device="tablet", origin="api")
    await journal.create(failed)
    placed = {r.container_name: r for r in await journal.placements()}
    assert {name: (r.source, r.device) for name, r in placed.items()} == {"web": ("pixel", HOME),
                                                                           "db": (HOME, "pixel")}
    assert placed["web"].id == back.id and back.way_back
    out = await journal.last_done_for_name("db")
    assert out is not None and out.home_config == {"Image": "x"}, "what the way back restores is kept"
    assert await journal.home_config("web") == {"Image": "x"}, "the way back records none of its own"
    assert await journal.home_config("nobody") == {}
    latest = await journal.last_for_name("db")
    assert latest is not None and latest.id == "db-again"
    assert back.as_json()["from"] == "pixel" and back.as_json()["to"] == HOME
    assert "home_config" not in back.as_json()


async def test_an_older_journal_gains_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE migrations (id TEXT PRIMARY KEY, container_id TEXT NOT NULL, container_name TEXT NOT NULL,
            device TEXT NOT NULL, origin TEXT NOT NULL, state TEXT NOT NULL, keep_source INTEGER NOT NULL,
            checkpoint_name TEXT NOT NULL, target_container_id TEXT NOT NULL DEFAULT '',
            error TEXT NOT NULL DEFAULT '', bytes_sent INTEGER NOT NULL DEFAULT 0, timings TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL, updated_at REAL NOT NULL);
        INSERT INTO migrations VALUES ('m1', 'c', 'web', 'pixel', 'label', 'done', 0, 'cp', 'd', '', 0, '{}', 1, 2);
    """)
    db.commit()
    db.close()
    journal = await Journal.open(path)
    try:
        record = await journal.last_done_for_name("web")
        assert record is not None and record.source == HOME and record.home_config == {}
    finally:
        await journal.close()


async def test_frames_the_agent_sends_wait_in_the_channel_not_in_memory() -> None:
    """The reader stops taking frames once REPLIES_LIMIT wait unread; a failure still wakes the consumer."""
    channel = Channel()
    link = link_on(channel)
    data = pb.Frame(file_data=pb.FileData(stream_id=1, data=b"x"))
    for _ in range(REPLIES_LIMIT + 10):
        channel.reader.feed_data(encode_frame(data))
    for _ in range(50):
        await asyncio.sleep(0)
    assert link._pending.replies.qsize() == REPLIES_LIMIT
    assert len(channel.reader._buffer) > 0, "the rest stays in the channel"  # type: ignore[attr-defined]
    first = await link.incoming()
    assert first.file_data.data == b"x"
    channel.reader.feed_data(b"\x00\x00")  # half a frame header, then the channel ends: the link fails
    channel.reader.feed_eof()
    with pytest.raises(TransportError):
        async with asyncio.timeout(2):
            while True:
                await link.incoming()
    await link.close()
