"""Compression on the wire: the codecs round-trip and refuse what is not theirs, the hellos settle on the best
codec both ends have, a chunk that does not shrink goes raw, the auto rule stops compressing when the link is
faster than the compressor, and files sent by the daemon's real sender land byte-identical through the agent's
real receiver (over an in-memory channel), or fail with a clear error when a compressed chunk is damaged."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from androcond.agent import session as agent_session
from androcond.agent.device import DeviceFacts, TargetContainer
from androcond.agent.incoming import IncomingMigration
from androcond.agent.outcomes import OutcomeStore
from androcond.agent.session import AgentSession
from androcond.config import parse_settings
from androcond.errors import ConfigError
from androcond.link.compress import BACKOFF, FUTILE, PROBE, WINDOW, AutoPolicy, FixedPolicy, policy_for
from androcond.link.payload import OutgoingFile
from androcond.link.ssh import AgentRefused, PhaseTimeouts
from androcond.link.transport import AgentConnection
from androcond.protocol import compression
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.codes import ErrorCode
from androcond.protocol.wire import CHUNK, encode_frame

MiB = 1024 * 1024
CODECS = compression.available()


def text(size: int, seed: int = 1) -> bytes:
    """Compressible but not trivial: log-like lines with varying numbers."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += f"{rng.randrange(10**6):06d} GET /api/v1/items/{rng.randrange(500)} 200 {rng.random():.4f}\n".encode()
    return bytes(out[:size])


# --- codecs -------------------------------------------------------------------------------------------------

def test_zlib_is_always_there_and_zstd_where_installed() -> None:
    assert compression.ZLIB in CODECS
    # The test extra installs zstandard: the fast tier covers both codecs.
    assert CODECS == (compression.ZSTD, compression.ZLIB)


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("data", [text(100), text(CHUNK), bytes(CHUNK), b"ab" * 5000])
def test_codecs_round_trip(name: str, data: bytes) -> None:
    packed = compression.encode(name, data, worth=0.95)
    assert packed is not None and len(packed) < len(data)
    assert compression.decode(name, packed, len(data)) == data


@pytest.mark.parametrize("name", CODECS)
def test_random_bytes_do_not_pay_and_go_raw(name: str) -> None:
    assert compression.encode(name, os.urandom(CHUNK), worth=0.95) is None


@pytest.mark.parametrize("name", CODECS)
def test_a_damaged_chunk_is_refused_not_misread(name: str) -> None:
    data = text(256 * 1024)
    packed = compression.encode(name, data, worth=0.95)
    assert packed is not None
    damaged = bytearray(packed)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(compression.CorruptChunk, match=name):
        compression.decode(name, bytes(damaged), len(data))
    with pytest.raises(compression.CorruptChunk, match=name):
        compression.decode(name, packed[:-5], len(data))  # cut short
    with pytest.raises(compression.CorruptChunk, match="announced"):
        compression.decode(name, packed, len(data) - 1)  # more than announced
    with pytest.raises(compression.CorruptChunk, match="announced"):
        compression.decode(name, packed, len(data) + 1)  # less than announced


@pytest.mark.parametrize("name", CODECS)
def test_a_chunk_that_would_inflate_beyond_a_chunk_is_refused(name: str) -> None:
    bomb = compression.codec(name).compress(bytes(64 * MiB))
    with pytest.raises(compression.CorruptChunk):
        compression.decode(name, bomb, CHUNK)
    with pytest.raises(compression.CorruptChunk, match="exceeds"):
        compression.decode(name, bomb, 64 * MiB)


def test_an_unknown_codec_is_named() -> None:
    with pytest.raises(compression.UnknownCodec, match="'lz4'"):
        compression.decode("lz4", b"x", 1)


# --- negotiation --------------------------------------------------------------------------------------------

BOTH = ("zstd", "zlib")


@pytest.mark.parametrize(("setting", "ours", "theirs", "chosen"), [
    ("auto", BOTH, BOTH, "zstd"),
    ("auto", BOTH, ("zlib",), "zlib"),   # a phone without zstandard
    ("auto", ("zlib",), BOTH, "zlib"),   # a host without it
    ("auto", BOTH, (), "none"),          # an agent from before compression
    ("none", BOTH, BOTH, "none"),
    ("zlib", BOTH, BOTH, "zlib"),
    ("zstd", BOTH, BOTH, "zstd"),
    ("zstd", BOTH, ("zlib",), "none"),
])
def test_negotiation(setting: str, ours: tuple[str, ...], theirs: tuple[str, ...], chosen: str) -> None:
    assert compression.choose(setting, ours, theirs).codec == chosen


def test_a_named_codec_an_end_lacks_says_which_end() -> None:
    why = compression.choose("zstd", BOTH, ("zlib",)).why
    assert "the device lacks it" in why and "uncompressed" in why
    assert "this host and the device lack it" in compression.choose("zstd", ("zlib",), ()).why


def test_the_device_setting() -> None:
    def device(**extra: object) -> Any:
        doc = {"devices": {"pixel": {"adb_serial": "emulator-5554", **extra}}}
        return parse_settings(doc, Path("/etc/androcond/androcond.toml")).devices["pixel"]

    assert device().compress == "auto"
    assert device(compress="zlib").compress == "zlib"
    assert device(compress="none").compress == "none"
    with pytest.raises(ConfigError, match=r"devices\.pixel\.compress: expected one of auto, zstd, zlib, none"):
        device(compress="lz4")


# --- the auto rule --------------------------------------------------------------------------------------------

def feed(policy: AutoPolicy, raw: int, *, compress_s: float, link_s: float) -> None:
    """`raw` bytes in 1 MiB chunks, each taking the given seconds."""
    for _ in range(raw // MiB):
        policy.record(raw=MiB, wire=MiB // 3, compress_s=compress_s if policy.wants() else 0.0, link_s=link_s)


def test_auto_keeps_compressing_while_the_link_is_the_bottleneck() -> None:
    policy = AutoPolicy("zstd", warmup=32 * MiB)
    feed(policy, 200 * MiB, compress_s=0.003, link_s=0.3)  # a 1 MB/s link
    assert policy.wants() and policy.mode == "compress"


def test_nothing_is_judged_while_the_buffers_take_everything() -> None:
    policy = AutoPolicy("zlib", warmup=32 * MiB)
    feed(policy, 32 * MiB, compress_s=0.01, link_s=0.0)
    assert policy.mode == "compress"


def test_auto_stops_compressing_when_the_link_is_faster_than_the_compressor() -> None:
    policy = AutoPolicy("zlib", warmup=32 * MiB)
    feed(policy, 32 * MiB + WINDOW, compress_s=0.01, link_s=0.0)  # the sender never waits on the link
    assert policy.mode == "probe" and not policy.wants()
    feed(policy, PROBE, compress_s=0.0, link_s=0.001)  # raw, the link takes 1 GB/s
    assert policy.mode == "raw"
    feed(policy, 500 * MiB, compress_s=0.0, link_s=0.5)  # and it stays off for the rest of the stream
    assert not policy.wants()


def test_auto_resumes_for_good_when_raw_turns_out_slower() -> None:
    policy = AutoPolicy("zstd", warmup=32 * MiB)
    feed(policy, 32 * MiB + WINDOW, compress_s=0.002, link_s=0.0)
    assert policy.mode == "probe"
    feed(policy, PROBE, compress_s=0.0, link_s=0.01)  # 100 MB/s raw, slower than the compressed 500 MB/s
    assert policy.mode == "settled" and policy.wants()
    feed(policy, 500 * MiB, compress_s=0.002, link_s=0.0)
    assert policy.wants()


def test_incompressible_chunks_are_tried_less_and_less() -> None:
    """Each tried chunk that did not pay is counted; after FUTILE in a row the policy backs off, doubling."""
    policy = AutoPolicy("zstd", warmup=32 * MiB)
    tried = []
    for _ in range(300):
        wants = policy.wants()
        tried.append(wants)
        policy.record(raw=MiB, wire=MiB, compress_s=0.003 if wants else 0.0, link_s=0.001)
    # FUTILE tries, then BACKOFF untried, one try, 2×BACKOFF untried, … capped at BACKOFF_MAX.
    assert tried[:FUTILE] == [True] * FUTILE
    assert tried[FUTILE:FUTILE + BACKOFF] == [False] * BACKOFF and tried[FUTILE + BACKOFF]
    assert not any(tried[FUTILE + BACKOFF + 1:FUTILE + 3 * BACKOFF + 1])
    assert sum(tried) < 20  # of 300 chunks


def test_a_chunk_that_pays_ends_the_back_off() -> None:
    policy = AutoPolicy("zstd", warmup=32 * MiB)
    for _ in range(FUTILE):
        policy.record(raw=MiB, wire=MiB, compress_s=0.003, link_s=0.001)
    while not policy.wants():  # the untried chunks of the back-off
        policy.record(raw=MiB, wire=MiB, compress_s=0.0, link_s=0.001)
    policy.record(raw=MiB, wire=MiB // 4, compress_s=0.003, link_s=0.001)  # text again: it pays
    assert policy.wants() and policy.futile == 0 and policy.backoff == BACKOFF
    for _ in range(FUTILE - 1):  # a few raw chunks do not back off at once
        policy.record(raw=MiB, wire=MiB, compress_s=0.003, link_s=0.001)
    assert policy.wants()


def test_fixed_settings() -> None:
    assert policy_for("zlib", "zlib", 0).wants()
    assert not policy_for("none", "none", 0).wants()
    assert not policy_for("auto", "none", 0).wants()  # nothing in common
    assert isinstance(policy_for("auto", "zstd", 0), AutoPolicy)
    assert isinstance(policy_for("zstd", "zstd", 0), FixedPolicy)


# --- the real sender and receiver over an in-memory channel ---------------------------------------------------

class Pipe:
    """One direction of the channel: what one end writes the other reads; `tap` sees (and may replace) each
    frame written (write_frame writes one frame per call)."""

    def __init__(self, tap: Callable[[bytes], bytes] | None = None) -> None:
        self.reader = asyncio.StreamReader()
        self.tap = tap

    def write(self, data: bytes) -> None:
        self.reader.feed_data(self.tap(data) if self.tap else data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        self.reader.feed_eof()

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)


class Connection:
    """The ssh connection and the agent's stderr, as the daemon's link uses them."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def close(self) -> None:
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[bytes]:
        await self.closed.wait()
        return
        yield b""


class Device:
    """What a session needs of its device for files: facts, and a discard that has nothing to remove."""

    def __init__(self, data_root: Path) -> None:
        self.facts = DeviceFacts(isa="aarch64", page_size=4096, criu_version="4.2.1", engine_version="28.0",
                                 data_root=data_root)
        self.fast_restore = True
        self.post_copy = False
        self.exec_root = None  # no runc states: as a source it could not freeze flat

    async def clean_after_restore(self, target: TargetContainer) -> None:
        pass

    async def discard(self, container_id: str) -> None:
        pass


@dataclass
class Wire:
    link: AgentConnection
    session: AgentSession
    landed: Path
    data: list[pb.FileData] = field(default_factory=list)  # the file data frames as they went


@asynccontextmanager
async def wire(tmp_path: Path, compress: str = "auto", *, damage: bool = False) -> AsyncIterator[Wire]:
    """A link and an agent session joined by pipes, a migration under way on the agent's side (as after its
    begin) whose checkpoint directory is `landed`."""
    data: list[pb.FileData] = []

    def tap(raw: bytes) -> bytes:
        frame = pb.Frame()
        frame.ParseFromString(raw[4:])
        if frame.WhichOneof("body") != "file_data":
            return raw
        if damage and frame.file_data.codec:
            damaged = bytearray(frame.file_data.data)
            damaged[len(damaged) // 2] ^= 0xFF
            frame.file_data.data = bytes(damaged)
        data.append(frame.file_data)
        return encode_frame(frame)

    to_agent, to_daemon = Pipe(tap), Pipe()
    connection = Connection()
    ends = cast(Any, connection)
    link = AgentConnection(ends, cast(Any, to_agent), cast(Any, to_daemon), ends,
                           PhaseTimeouts(stream_idle=10.0, file_ack=10.0), compress=cast(Any, compress))
    session = AgentSession(cast(Any, Device(tmp_path)), OutcomeStore(tmp_path / "outcomes"), to_agent, to_daemon)
    (tmp_path / "outcomes").mkdir()
    landed = tmp_path / "checkpoint"
    landed.mkdir()
    serving = asyncio.create_task(session.run())
    try:
        await link._hello()
        session.migration = IncomingMigration(pb.Begin(migration_id="m1"),
                                              target=TargetContainer("c1", landed, tmp_path / "upper"))
        yield Wire(link, session, landed, data)
    finally:
        await link.close()
        async with asyncio.timeout(5):
            await serving


def files_in(directory: Path, contents: dict[str, bytes]) -> list[OutgoingFile]:
    source = directory / "source"
    source.mkdir()
    for name, content in contents.items():
        (source / name).write_bytes(content)
    return [OutgoingFile(pb.CHECKPOINT, name, source=source / name, size=len(content))
            for name, content in contents.items()]


CONTENTS = {"pages-1.img": text(3 * MiB + 12345), "random.img": os.urandom(2 * MiB + 7),
            "small.img": text(300, seed=2), "empty.img": b""}


@pytest.mark.parametrize(("setting", "agent_has", "codec"), [
    ("auto", BOTH, "zstd"),
    ("auto", ("zlib",), "zlib"),
    ("auto", (), ""),
    ("zlib", BOTH, "zlib"),
    ("none", BOTH, ""),
])
async def test_files_land_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str,
                                         agent_has: tuple[str, ...], codec: str) -> None:
    # What the agent names in its hello (the receiver still decodes with this process's codecs).
    monkeypatch.setattr(agent_session, "compression", SimpleNamespace(available=lambda: agent_has))
    outgoing = files_in(tmp_path, CONTENTS)
    async with wire(tmp_path, setting) as w:
        assert w.link.codec == (codec or "none")
        state = await w.link.send_files(outgoing)
        assert state.files_verified == len(CONTENTS)
        for name, content in CONTENTS.items():
            assert (w.landed / name).read_bytes() == content
        assert w.session.migration is not None and w.session.migration.bytes_received == state.bytes_sent
    raw = sum(len(c) for c in CONTENTS.values())
    assert state.bytes_sent == raw
    assert state.wire_bytes == sum(len(d.data) for d in w.data)
    used = {d.codec for d in w.data}
    if codec:
        assert used == {codec, ""}  # the random file's chunks went raw
        assert state.wire_bytes < raw - len(CONTENTS["pages-1.img"]) // 2
    else:
        assert used == {""}
        assert state.wire_bytes == raw


async def test_random_data_goes_raw_chunk_by_chunk(tmp_path: Path) -> None:
    content = os.urandom(3 * MiB)
    async with wire(tmp_path) as w:
        assert w.link.codec == "zstd"
        state = await w.link.send_files(files_in(tmp_path, {"random.img": content}))
        assert (w.landed / "random.img").read_bytes() == content
    assert [d.codec for d in w.data] == ["", "", ""]
    assert state.wire_bytes == state.bytes_sent == len(content)


async def test_a_damaged_compressed_chunk_fails_the_migration_clearly(tmp_path: Path) -> None:
    async with wire(tmp_path, damage=True) as w:
        with pytest.raises(AgentRefused, match=r"'pages-1.img': the compressed chunk at byte 0 is unreadable: "
                                               r"zstd") as failed:
            await w.link.send_files(files_in(tmp_path, {"pages-1.img": text(2 * MiB)}))
        assert failed.value.code == ErrorCode.PROTOCOL
        assert w.session.migration is not None and w.session.migration.finished
        assert not (w.landed / "pages-1.img").exists()  # discarded: nothing half-written stays
