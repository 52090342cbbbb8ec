"""The agent's memory does not grow with what its disk has not taken yet: on a device whose storage is slower
than the link (the `slow-disk` agent stores each chunk 20 ms late), a 256 MiB file passes while the agent's
resident memory stays within the client's bound on unstored data (UNSTORED_LIMIT) plus the channel's buffers.
Before the Stored frames, asyncssh's channel buffered what the link brought in: hundreds of MiB."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from androcond.link.payload import OutgoingFile
from androcond.link.transport import UNSTORED_LIMIT, AgentConnection
from androcond.protocol import protocol_pb2 as pb

from ..helpers import counter_config
from ..testbed.images import TEST_IMAGE
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import faulty_agent

pytestmark = pytest.mark.testbed

SIZE = 256 << 20
# Unstored data the client allows, the ssh channel's window and its session buffer (8 MiB each), frames and
# their parsed copies in flight: well under the file's size.
BOUND = UNSTORED_LIMIT + (48 << 20)


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def test_a_slow_disk_does_not_make_the_agent_buffer_the_file(agent_server: AgentBed, tmp_path: Path) -> None:
    port = AGENT_PORT + 41
    agent = faulty_agent(agent_server, "slow-disk", port, tmp_path)
    payload = Path("/dev/shm") / f"androcond-memory-{uuid.uuid4().hex}"
    try:
        with payload.open("wb") as f:
            f.truncate(SIZE)  # sparse: zeros, read at memory speed
        assert agent.proc is not None
        before = _kib(agent.proc.pid, "VmRSS") << 10
        config = counter_config()
        config["Image"] = TEST_IMAGE
        async with await AgentConnection.open(agent_server.serve_endpoint(tmp_path, port=port)) as link:
            assert link.hello.reports_stored
            await link.begin(pb.Begin(migration_id=uuid.uuid4().hex, container_name="", image=TEST_IMAGE,
                                      create_config_json=json.dumps(config), checkpoint_name="memory",
                                      total_bytes=SIZE, file_count=1))
            state = await link.send_files([OutgoingFile(pb.CHECKPOINT, "pages-1.img", source=payload, size=SIZE)])
            await link.abort("test done")
        assert state.files_verified == 1
        peak = _kib(agent.proc.pid, "VmHWM") << 10
        assert peak - before < BOUND, f"the agent grew by {(peak - before) >> 20} MiB for a {SIZE >> 20} MiB file"
    finally:
        payload.unlink(missing_ok=True)
        agent.stop()
