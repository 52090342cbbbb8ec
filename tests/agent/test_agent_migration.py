"""A checkpoint from engine A pushed through the transport to the agent restores on engine B — through the
agent's own ssh server, through OpenSSH + `agent stdio`, and through an adb forward."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from androcond.engine import Engine
from androcond.link.ssh import Endpoint
from androcond.link.transport import AgentConnection
from androcond.protocol import protocol_pb2 as pb

from ..testbed import TestBed
from .conftest import AGENT_PORT, AgentBed
from .scenario import assert_running_on_device, checkpointed_source

pytestmark = pytest.mark.testbed


async def migrate(endpoint: Endpoint, bed: TestBed, engine_a: Engine, engine_b: Engine, name: str) -> str:
    source = await checkpointed_source(bed, engine_a)
    begin = source.begin(name)
    seen: list[int] = []
    async with await AgentConnection.open(endpoint) as link:
        assert link.hello.isa == "x86_64"
        assert link.hello.page_size == 4096
        assert link.hello.engine_version.startswith("20.10")
        assert link.hello.criu_version.startswith("4.")
        ack = await link.begin(begin)
        assert not ack.need_image
        assert ack.container_id, "the target container is prepared while files stream"
        sent = await link.send_files(source.files(), progress=lambda p: seen.append(p.bytes_sent))
        assert sent.files_verified == begin.file_count
        assert sent.bytes_sent == begin.total_bytes
        outcome = await link.commit()
    assert outcome.state == pb.OUTCOME_RUNNING, outcome.error
    assert outcome.container_id == ack.container_id
    assert seen == sorted(seen)
    assert seen[-1] == begin.total_bytes
    await assert_running_on_device(bed, engine_b, outcome.container_id, source.last_count)

    # A daemon that lost the connection asks again on a new one: the agent remembers.
    async with await AgentConnection.open(endpoint) as link:
        again = await link.query(begin.migration_id)
        unknown = await link.query(uuid.uuid4().hex)
    assert (again.state, again.container_id) == (pb.OUTCOME_RUNNING, outcome.container_id)
    assert again.bytes_received == begin.total_bytes
    assert unknown.state == pb.OUTCOME_UNKNOWN
    return outcome.container_id


async def test_through_agent_serve(agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path,
                                   unique_name: str) -> None:
    await migrate(agent_server.serve_endpoint(tmp_path), agent_server.bed, engine_a, engine_b, unique_name)


async def test_through_openssh_and_agent_stdio(agent_bed: AgentBed, engine_a: Engine, engine_b: Engine,
                                               tmp_path: Path, unique_name: str) -> None:
    await migrate(agent_bed.openssh_endpoint(tmp_path), agent_bed.bed, engine_a, engine_b, unique_name)


async def test_through_adb_forward(agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path,
                                   unique_name: str) -> None:
    bed = agent_server.bed
    out = await asyncio.to_thread(bed.adb.adb, "-s", bed.adb_serial, "forward", "tcp:0", f"tcp:{AGENT_PORT}")
    port = int(out.strip())
    try:
        endpoint = agent_server.serve_endpoint(tmp_path, host="127.0.0.1", port=port)
        await migrate(endpoint, bed, engine_a, engine_b, unique_name)
    finally:
        await asyncio.to_thread(bed.adb.adb, "-s", bed.adb_serial, "forward", "--remove", f"tcp:{port}")
