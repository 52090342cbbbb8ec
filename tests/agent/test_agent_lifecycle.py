"""The agent never hangs, never leaks and reports every failure: a dead `docker load`, a kill in the middle of
a restore, SIGTERM with a session in flight, a bad migration id. Frames are spoken by hand here (RawLink) so
that each test sees the agent's Error frame whole: message, phase and code."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from androcond.agent.outcomes import OutcomeRecord, ProcessIdentity
from androcond.config import load_settings
from androcond.engine import Engine
from androcond.link.payload import OutgoingFile, read_file_chunks
from androcond.link.ssh import Endpoint
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.codes import OutcomeState
from androcond.protocol.wire import PROTOCOL_VERSION, ChannelClosed, WireError, body, read_frame, write_frame

from ..helpers import counter_config
from ..testbed.agent import DeviceAgent
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import faulty_agent
from .scenario import CHECKPOINT, checkpointed_source
from .test_agent_faults import container_exists

pytestmark = pytest.mark.testbed

CHUNK = 256 * 1024
FRAME_TIMEOUT_S = 60.0


class RawLink:
    """A client of the agent that sends and reads frames itself."""

    def __init__(self, conn: asyncssh.SSHClientConnection, writer: asyncssh.SSHWriter[bytes],
                 reader: asyncssh.SSHReader[bytes]) -> None:
        self.conn = conn
        self.writer = writer
        self.reader = reader

    @classmethod
    async def open(cls, endpoint: Endpoint) -> RawLink:
        conn = await asyncssh.connect(endpoint.host, endpoint.port, username=endpoint.user,
                                      known_hosts=asyncssh.read_known_hosts(str(endpoint.known_hosts)),
                                      client_keys=[str(endpoint.identity)], agent_path=None)
        writer, reader, _ = await conn.open_session(encoding=None)
        link = cls(conn, writer, reader)
        await link.send(pb.Frame(client_hello=pb.ClientHello(protocol_version=PROTOCOL_VERSION)))
        hello = await link.recv()
        assert body(hello) == "agent_hello", hello
        return link

    async def send(self, frame: pb.Frame) -> None:
        await write_frame(self.writer, frame)

    async def recv(self) -> pb.Frame:
        async with asyncio.timeout(FRAME_TIMEOUT_S):
            return await read_frame(self.reader)

    async def begin(self, begin: pb.Begin) -> pb.BeginAck:
        await self.send(pb.Frame(begin=begin))
        frame = await self.recv()
        assert body(frame) == "begin_ack", frame
        return frame.begin_ack

    async def send_file(self, stream_id: int, spec: OutgoingFile) -> pb.FileAck:
        await self.send(pb.Frame(file_start=pb.FileStart(
            stream_id=stream_id, destination=spec.destination, path=spec.path, kind=spec.kind,  # type: ignore[arg-type]
            size=spec.size, mode=spec.mode, link_target=spec.link_target, uid=spec.uid, gid=spec.gid,
            mtime_ns=spec.mtime_ns, opaque=spec.opaque)))
        digest = hashlib.sha256()
        if spec.kind == pb.REGULAR:
            async for chunk in read_file_chunks(spec):
                digest.update(chunk)
                await self.send(pb.Frame(file_data=pb.FileData(stream_id=stream_id, data=chunk)))
        await self.send(pb.Frame(file_end=pb.FileEnd(stream_id=stream_id, sha256=digest.digest())))
        frame = await self.recv()
        assert body(frame) == "file_ack", frame
        return frame.file_ack

    async def query(self, migration_id: str) -> pb.Frame:
        await self.send(pb.Frame(query=pb.Query(migration_id=migration_id)))
        return await self.recv()

    async def until_error(self) -> pb.Error:
        """Read until the agent's Error frame (the agent must send one: a closed channel fails the test)."""
        while True:
            frame = await self.recv()
            if body(frame) == "error":
                return frame.error

    async def close(self) -> None:
        self.conn.close()
        async with asyncio.timeout(10):
            await self.conn.wait_closed()


async def query(endpoint: Endpoint, migration_id: str) -> pb.Outcome:
    link = await RawLink.open(endpoint)
    try:
        frame = await link.query(migration_id)
    finally:
        await link.close()
    assert body(frame) == "outcome", frame
    return frame.outcome


def outcomes_dir(agent: DeviceAgent) -> Path:
    return load_settings(agent.config).agent.spool_dir / "outcomes"


def log_entries(agent: DeviceAgent) -> list[dict[str, Any]]:
    entries = []
    for line in agent.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


async def wait_for_log(agent: DeviceAgent, match: Callable[[dict[str, Any]], bool], timeout: float = 30,
                       ) -> dict[str, Any]:
    """Poll the agent's log for a line (a readiness check with a deadline, not a sleep)."""
    async with asyncio.timeout(timeout):
        while True:
            for entry in log_entries(agent):
                if match(entry):
                    return entry
            await asyncio.sleep(0.05)


async def wait_exited(agent: DeviceAgent, timeout: float) -> None:
    assert agent.proc is not None
    await asyncio.to_thread(agent.proc.wait, timeout)  # subprocess.TimeoutExpired after `timeout`


async def zeros(chunks: int) -> AsyncIterator[bytes]:
    for _ in range(chunks):
        yield bytes(CHUNK)


# --- a dead `docker load` ----------------------------------------------------------------------------------

async def test_a_dead_image_load_ends_the_session_with_an_image_error(
        agent_server: AgentBed, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    port = AGENT_PORT + 40
    agent = faulty_agent(agent_server, "load-dies", port, tmp_path)
    try:
        endpoint = agent_server.serve_endpoint(tmp_path, port=port)
        image = f"androcond-test/never-loaded:{uuid.uuid4().hex[:8]}"
        migration_id = uuid.uuid4().hex
        config = counter_config()
        config["Image"] = image
        # Far more than the session's image queue (16 chunks) and the channel's window: without the race
        # against the load, the agent would wait forever on a full queue.
        chunks = 96
        link = await RawLink.open(endpoint)
        try:
            ack = await link.begin(pb.Begin(migration_id=migration_id, container_name=unique_name, image=image,
                                            create_config_json=json.dumps(config), checkpoint_name=CHECKPOINT,
                                            total_bytes=chunks * CHUNK))
            assert ack.need_image

            async def stream() -> None:
                await link.send(pb.Frame(file_start=pb.FileStart(stream_id=1, destination=pb.IMAGE_TAR,
                                                                 path="image.tar", kind=pb.REGULAR)))
                async for chunk in zeros(chunks):
                    await link.send(pb.Frame(file_data=pb.FileData(stream_id=1, data=chunk)))

            started = time.monotonic()
            sending = asyncio.create_task(stream())
            try:
                error = await link.until_error()
            finally:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)
            elapsed = time.monotonic() - started
        finally:
            await link.close()
        assert (error.phase, error.code) == ("image", pb.ERROR_RESTORE), error
        assert "loading the image failed" in error.message
        assert "Connection reset" in error.message
        assert elapsed < 30, f"the error took {elapsed:.1f}s"
        dies = await wait_for_log(agent, lambda e: e.get("msg") == "image load dies", timeout=1)
        assert dies["chunks_read"] == 2

        outcome = await query(endpoint, migration_id)
        assert outcome.state == pb.OUTCOME_FAILED
        assert "loading the image failed" in outcome.error
        assert not await engine_b.image_exists(image)
        assert not await container_exists(engine_b, unique_name)
        assert sorted(p.name for p in outcomes_dir(agent).iterdir()) == [f"{migration_id}.json"]
    finally:
        agent.stop()


# --- an error frame for a bad migration id ------------------------------------------------------------------

async def test_a_bad_migration_id_is_a_protocol_error_of_its_phase(agent_server: AgentBed, tmp_path: Path,
                                                                   unique_name: str) -> None:
    endpoint = agent_server.serve_endpoint(tmp_path)
    link = await RawLink.open(endpoint)
    try:
        await link.send(pb.Frame(begin=pb.Begin(migration_id="../../etc/passwd", container_name=unique_name,
                                                image="x", create_config_json="{}", checkpoint_name=CHECKPOINT)))
        frame = await link.recv()
        assert body(frame) == "error", frame
        assert (frame.error.phase, frame.error.code) == ("begin", pb.ERROR_PROTOCOL)
        assert "refused migration id" in frame.error.message
        with pytest.raises((ChannelClosed, WireError)):  # one error ends the session
            await link.recv()
    finally:
        await link.close()

    link = await RawLink.open(endpoint)
    try:
        frame = await link.query("")
        assert body(frame) == "error", frame
        assert (frame.error.phase, frame.error.code) == ("query", pb.ERROR_PROTOCOL)
    finally:
        await link.close()


# --- stale outcomes ------------------------------------------------------------------------------------------

async def test_an_agent_killed_while_restoring_settles_the_outcome_when_it_starts_again(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    bed = agent_server.bed
    port = AGENT_PORT + 41
    endpoint = agent_server.serve_endpoint(tmp_path, port=port)
    held = faulty_agent(agent_server, "hold-restore", port, tmp_path)
    restarted: DeviceAgent | None = None
    try:
        source = await checkpointed_source(bed, engine_a)
        begin = source.begin(unique_name)
        record_path = outcomes_dir(held) / f"{begin.migration_id}.json"
        link = await RawLink.open(endpoint)
        try:
            ack = await link.begin(begin)
            assert ack.container_id
            receiving = json.loads(record_path.read_text())
            assert (receiving["state"], receiving["container_id"]) == ("receiving", ack.container_id), \
                "the prepared container is recorded as soon as it exists"
            for stream_id, spec in enumerate(source.files(), start=1):
                assert (await link.send_file(stream_id, spec)).ok
            await link.send(pb.Frame(commit=pb.Commit(file_count=begin.file_count)))
            await wait_for_log(held, lambda e: e.get("msg") == "holding the restore"
                               and e.get("migration_id") == begin.migration_id)
            restoring = json.loads(record_path.read_text())
            assert held.proc is not None
            assert (restoring["state"], restoring["owner_pid"]) == ("restoring", held.proc.pid)
            held.kill()
        finally:
            await link.close()
        assert await container_exists(engine_b, ack.container_id), "the kill left the prepared container"

        # Same port, same config and spool directory: the plain agent.
        restarted = DeviceAgent(bed, tmp_path, port, name=held.name, host_key=agent_server.agent.host_key_path)
        restarted.start()
        settled = await wait_for_log(restarted, lambda e: e.get("msg") == "settled a stale outcome"
                                     and e.get("migration_id") == begin.migration_id)
        assert (settled["was"], settled["now"]) == ("restoring", "failed")
        outcome = await query(endpoint, begin.migration_id)
        assert outcome.state == pb.OUTCOME_FAILED
        assert outcome.error == "the agent stopped during the restore; the container did not come up"
        assert not await container_exists(engine_b, ack.container_id)
        assert not (bed.engine_b.data_root / "containers" / ack.container_id).exists()
    finally:
        for agent in (restarted, held):
            if agent is not None:
                agent.stop()


async def test_a_query_settles_an_outcome_only_if_its_owner_is_gone(
        agent_server: AgentBed, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    endpoint = agent_server.serve_endpoint(tmp_path)
    directory = outcomes_dir(agent_server.agent)
    me = ProcessIdentity.current()  # alive, and not the agent: like another `agent stdio` process mid-session
    prepared = await engine_b.create_container(counter_config(), name=f"{unique_name}-prepared")
    restored = await engine_b.create_container(counter_config(), name=f"{unique_name}-restored")
    await engine_b.start_container(restored)
    records = {
        "live": OutcomeRecord(f"live-{uuid.uuid4().hex}", OutcomeState.RECEIVING, prepared, owner_pid=me.pid,
                              owner_start=me.start),
        # The same pid with another start time is another (dead) process: a pid the kernel reused.
        "reused": OutcomeRecord(f"reused-{uuid.uuid4().hex}", OutcomeState.RECEIVING, prepared, owner_pid=me.pid,
                                owner_start=me.start + 1),
    }
    old_id = f"old-{uuid.uuid4().hex}"
    paths = [directory / f"{r.migration_id}.json" for r in records.values()] + [directory / f"{old_id}.json"]
    try:
        directory.mkdir(parents=True, exist_ok=True)  # the shared agent may not have written any outcome yet
        for record in records.values():
            (directory / f"{record.migration_id}.json").write_text(json.dumps(asdict(record)))
        # An outcome file from before owners were recorded, of a restore that came up.
        (directory / f"{old_id}.json").write_text(json.dumps({
            "migration_id": old_id, "state": "restoring", "container_id": restored, "error": "",
            "restore_seconds": 0.0, "bytes_received": 7}))
        live_before = (directory / f"{records['live'].migration_id}.json").read_text()

        live = await query(endpoint, records["live"].migration_id)
        assert (live.state, live.container_id) == (pb.OUTCOME_RECEIVING, prepared)
        assert (directory / f"{records['live'].migration_id}.json").read_text() == live_before
        assert await container_exists(engine_b, prepared), "a live session's container is not touched"

        old = await query(endpoint, old_id)
        assert (old.state, old.container_id, old.error, old.bytes_received) == (pb.OUTCOME_RUNNING, restored, "", 7)
        assert (await engine_b.inspect_container(restored))["State"]["Running"]

        reused = await query(endpoint, records["reused"].migration_id)
        assert reused.state == pb.OUTCOME_ABORTED
        assert "the agent stopped while receiving" in reused.error
        assert not await container_exists(engine_b, prepared)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


# --- SIGTERM with sessions in flight -----------------------------------------------------------------------

async def test_serve_on_sigterm_drains_cancels_and_removes_the_files(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    bed = agent_server.bed
    port = AGENT_PORT + 42
    shutdown_timeout = 2.0
    agent = DeviceAgent(bed, tmp_path, port, name="agent-drain", host_key=agent_server.agent.host_key_path)
    # [agent] is the config's last table.
    agent.config.write_text(agent.config.read_text() + f"shutdown_timeout = {shutdown_timeout}\n")
    agent.start()
    try:
        endpoint = agent_server.serve_endpoint(tmp_path, port=port)
        source = await checkpointed_source(bed, engine_a)
        begin = source.begin(unique_name)
        files = source.files()
        busy = await RawLink.open(endpoint)
        idle = await RawLink.open(endpoint)  # a session that ends by itself during the drain
        try:
            ack = await busy.begin(begin)
            for stream_id, spec in enumerate(files[:3], start=1):
                assert (await busy.send_file(stream_id, spec)).ok
            container_dir = bed.engine_b.data_root / "containers" / ack.container_id
            assert any((container_dir / "checkpoints" / CHECKPOINT).iterdir())

            assert agent.proc is not None
            signalled = time.monotonic()
            os.kill(agent.proc.pid, signal.SIGTERM)
            await wait_for_log(agent, lambda e: e.get("msg") == "waiting for sessions to finish")
            with pytest.raises(OSError):  # no new connection once stopping
                await RawLink.open(endpoint)
            await idle.close()
            error = await busy.until_error()
        finally:
            await busy.close()
        assert (error.code, error.phase) == (pb.ERROR_SHUTTING_DOWN, "files"), error
        assert "the migration was discarded" in error.message
        await wait_exited(agent, timeout=30)
        took = time.monotonic() - signalled
        ended = await wait_for_log(agent, lambda e: e.get("msg") == "sessions ended", timeout=1)
        assert (ended["drained"], ended["cancelled"], ended["still_running"]) == (1, 1, 0)
        assert shutdown_timeout <= took < shutdown_timeout + 10, f"exited {took:.1f}s after SIGTERM"

        assert not await container_exists(engine_b, ack.container_id)
        assert not container_dir.exists(), "the received files went with the prepared container"
        record = json.loads((outcomes_dir(agent) / f"{begin.migration_id}.json").read_text())
        assert record["state"] == "aborted"
        assert "shut down" in record["error"]
    finally:
        agent.stop()
