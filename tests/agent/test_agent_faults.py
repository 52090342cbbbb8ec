"""Faults on the real link: whatever goes wrong, the device is left without partial files or a half-made
container, and the client gets a clear error. Faults are injected through small subclasses."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import cast

import asyncssh
import pytest

from androcond.engine import Engine, EngineError
from androcond.link.payload import OutgoingFile
from androcond.link.ssh import (
    AgentRefused,
    AuthenticationFailed,
    Endpoint,
    FileRejected,
    HostKeyRejected,
    TransportError,
)
from androcond.link.transport import AgentConnection
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.compression import CompressSetting

from ..testbed.bed import RUN_FILTER
from ..testbed.images import rootfs_tar
from .conftest import AgentBed
from .scenario import assert_running_on_device, checkpointed_source

pytestmark = pytest.mark.testbed


class CorruptingConnection(AgentConnection):
    """Flips one byte of the first data frame of `target` after its digest was taken: damage in transit."""

    target = "pages-1.img"
    _stream_of_target: int | None = None
    corrupted = False
    corrupted_codec = ""  # the damaged chunk's codec ("": sent raw)

    async def _send(self, frame: pb.Frame) -> None:
        if frame.HasField("file_start") and frame.file_start.path == self.target:
            self._stream_of_target = frame.file_start.stream_id
        if (frame.HasField("file_data") and frame.file_data.stream_id == self._stream_of_target
                and not self.corrupted):
            data = bytearray(frame.file_data.data)
            data[len(data) // 2] ^= 0x01
            frame.file_data.data = bytes(data)
            self.corrupted = True
            self.corrupted_codec = frame.file_data.codec
        await super()._send(frame)


class CuttingConnection(AgentConnection):
    """Drops the TCP connection after a number of data frames: a link that dies mid-stream."""

    cut_after = 3
    _frames = 0

    async def _send(self, frame: pb.Frame) -> None:
        if frame.HasField("file_data"):
            self._frames += 1
            if self._frames > self.cut_after:
                cast(asyncssh.SSHClientConnection, self._conn).abort()
        await super()._send(frame)


async def container_exists(engine: Engine, name: str) -> bool:
    try:
        await engine.inspect_container(name)
    except EngineError as exc:
        assert exc.status == 404
        return False
    return True


async def settled_outcome(endpoint: Endpoint, migration_id: str) -> pb.Outcome:
    """The agent cleans up when it notices the broken channel: ask until it has."""
    async with asyncio.timeout(30):
        while True:
            async with await AgentConnection.open(endpoint) as link:
                outcome = await link.query(migration_id)
            if outcome.state not in (pb.OUTCOME_RECEIVING, pb.OUTCOME_RESTORING):
                return outcome
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("compress", ["none", "zstd"])
async def test_flipped_byte_is_caught_and_nothing_restored(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        compress: CompressSetting) -> None:
    """Raw, the file's SHA-256 catches the damage; in a compressed chunk, the chunk's own zstd checksum does
    (a chunk that did not pay goes raw, and then the SHA-256 again)."""
    endpoint = agent_server.serve_endpoint(tmp_path)
    source = await checkpointed_source(agent_server.bed, engine_a)
    begin = source.begin(unique_name)
    link = await CorruptingConnection.open(endpoint, compress=compress)
    try:
        ack = await link.begin(begin)
        checkpoint_dir = agent_server.bed.engine_b.data_root / "containers" / ack.container_id / "checkpoints"
        with pytest.raises((FileRejected, AgentRefused)) as caught:
            await link.send_files(source.files())
        assert link.corrupted
        expected = "the compressed chunk at byte 0 is unreadable" if link.corrupted_codec else "SHA-256 mismatch"
        assert "pages-1.img" in str(caught.value) and expected in str(caught.value), caught.value
        if compress == "none":
            assert isinstance(caught.value, FileRejected)
            with pytest.raises(FileRejected):  # the link refuses to go on once a file was rejected
                await link.commit()
    finally:
        await link.close()
    outcome = await settled_outcome(endpoint, begin.migration_id)
    assert outcome.state == pb.OUTCOME_FAILED
    assert expected in outcome.error
    assert not await container_exists(engine_b, unique_name)
    assert not checkpoint_dir.exists()


async def test_cut_connection_leaves_no_partial_files_or_container(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    endpoint = agent_server.serve_endpoint(tmp_path)
    source = await checkpointed_source(agent_server.bed, engine_a)
    begin = source.begin(unique_name)
    link = await CuttingConnection.open(endpoint)
    try:
        ack = await link.begin(begin)
        upper = Path((await engine_b.inspect_container(ack.container_id))["GraphDriver"]["Data"]["UpperDir"])
        with pytest.raises(TransportError):
            await link.send_files(source.files())
    finally:
        await link.close()
    outcome = await settled_outcome(endpoint, begin.migration_id)
    assert outcome.state == pb.OUTCOME_ABORTED
    assert not await container_exists(engine_b, unique_name)
    assert not upper.exists(), "the prepared container's layer is gone with it"
    assert not (agent_server.bed.engine_b.data_root / "containers" / ack.container_id).exists()


async def test_path_traversal_is_refused(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                         tmp_path: Path, unique_name: str) -> None:
    endpoint = agent_server.serve_endpoint(tmp_path)
    source = await checkpointed_source(agent_server.bed, engine_a)
    escape = Path("/tmp") / f"androcond-escape-{uuid.uuid4().hex}"
    evil = OutgoingFile(pb.CHECKPOINT, f"../../../../../../..{escape}", source=source.files()[0].source, size=0)
    async with await AgentConnection.open(endpoint) as link:
        await link.begin(source.begin(unique_name))
        with pytest.raises(AgentRefused, match=r"refused path .*'\.\.'"):
            await link.send_files([evil])
    assert not escape.exists()
    await settled_outcome(endpoint, source.begin(unique_name).migration_id)
    assert not await container_exists(engine_b, unique_name)


async def test_symlink_out_of_the_layer_is_not_followed(agent_server: AgentBed, engine_a: Engine,
                                                        tmp_path: Path, unique_name: str) -> None:
    endpoint = agent_server.serve_endpoint(tmp_path)
    source = await checkpointed_source(agent_server.bed, engine_a)
    escape = Path("/tmp") / f"androcond-escape-{uuid.uuid4().hex}"
    payload = tmp_path / "payload"
    payload.write_bytes(b"x")
    files = [OutgoingFile(pb.ROOTFS, "out", pb.SYMLINK, link_target="/tmp", mode=0o777),
             OutgoingFile(pb.ROOTFS, f"out/{escape.name}", source=payload, size=1)]
    async with await AgentConnection.open(endpoint) as link:
        await link.begin(source.begin(unique_name))
        with pytest.raises(AgentRefused, match="symbolic link"):
            await link.send_files(files)
    assert not escape.exists()


async def test_unknown_host_key_is_refused_with_its_fingerprint(agent_server: AgentBed, tmp_path: Path) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    good = agent_server.serve_endpoint(tmp_path)
    endpoint = Endpoint(good.host, good.port, good.user, good.identity,
                        agent_server.known_hosts(tmp_path, good.host, good.port, key=stranger))
    with pytest.raises(HostKeyRejected) as info:
        await AgentConnection.open(endpoint)
    assert agent_server.host_key.get_fingerprint() in str(info.value)


async def test_wrong_client_key_is_refused(agent_server: AgentBed, tmp_path: Path) -> None:
    wrong = tmp_path / "id_wrong"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(wrong)
    good = agent_server.serve_endpoint(tmp_path)
    with pytest.raises(AuthenticationFailed, match="refused key"):
        await AgentConnection.open(Endpoint(good.host, good.port, good.user, wrong, good.known_hosts))


async def test_restore_refused_by_the_device_engine_reaches_the_client(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    endpoint = agent_server.serve_endpoint(tmp_path)
    source = await checkpointed_source(agent_server.bed, engine_a)
    files = [f for f in source.files() if f.path != "pstree.img"]  # CRIU cannot restore without it
    begin = source.begin(unique_name)
    begin.file_count = len(files)
    async with await AgentConnection.open(endpoint) as link:
        await link.begin(begin)
        await link.send_files(files)
        outcome = await link.commit()
    assert outcome.state == pb.OUTCOME_FAILED
    assert "restore refused by the device engine" in outcome.error
    assert "OCI runtime restore failed" in outcome.error  # the engine's own words
    assert not await container_exists(engine_b, unique_name)


async def test_device_without_space_refuses_before_writing(agent_server: AgentBed, engine_a: Engine,
                                                           engine_b: Engine, tmp_path: Path,
                                                           unique_name: str) -> None:
    source = await checkpointed_source(agent_server.bed, engine_a)
    begin = source.begin(unique_name)
    begin.total_bytes = 1 << 60
    async with await AgentConnection.open(agent_server.serve_endpoint(tmp_path)) as link:
        with pytest.raises(AgentRefused, match="not enough space on the device"):
            await link.begin(begin)
    assert not await container_exists(engine_b, unique_name)


async def test_missing_image_is_shipped_and_loaded(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                   tmp_path: Path, unique_name: str) -> None:
    bed = agent_server.bed
    image = f"androcond-test/shipped:{uuid.uuid4().hex[:8]}"
    programs = {p.name: p for p in (bed.run_root / "programs").iterdir()}
    await asyncio.to_thread(bed.engine_a.cli, "import", "-", image, input_bytes=rootfs_tar(programs))
    try:
        assert not await engine_b.image_exists(image)
        source = await checkpointed_source(bed, engine_a, image=image)
        begin = source.begin(unique_name, image=image)
        shipped = OutgoingFile(pb.IMAGE_TAR, "image.tar", stream=lambda: engine_a.save_image(image))
        async with await AgentConnection.open(agent_server.serve_endpoint(tmp_path)) as link:
            ack = await link.begin(begin)
            assert ack.need_image
            await link.send_files([shipped])
            await link.send_files(source.files())
            outcome = await link.commit()
        assert outcome.state == pb.OUTCOME_RUNNING, outcome.error
        assert await engine_b.image_exists(image)
        await assert_running_on_device(bed, engine_b, outcome.container_id, source.last_count)
    finally:
        bed.engine_a.remove_containers(RUN_FILTER)
        bed.engine_b.remove_containers(RUN_FILTER)
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rmi", "-f", image, check=False)
