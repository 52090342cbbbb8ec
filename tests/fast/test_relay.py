"""The way back's relay (source/relay.py) against a stand-in for the source agent's link: what it hands the
stream phase file by file, the source's own digest handed on for the target to check, its refusals, and when it
releases the source's link; and when a migration relays at all (migration/stream.relays). The relay over the
real link, into the host's engine, is proven on the bed: tests/agent/test_way_back.py."""

from __future__ import annotations

import hashlib

import pytest

from androcond.agent.device import read_vdso
from androcond.link.payload import OutgoingFile
from androcond.link.ssh import TransportError
from androcond.migration.container_config import TargetPlan
from androcond.migration.plan import CrossIsa, Emulated, Plan
from androcond.migration.stream import relays
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.wire import encode_frame
from androcond.recoder import RecodeOptions, VdsoTemplate
from androcond.source.relay import Relay

from .test_transport_reader import Channel, link_on


class Frames:
    """The source agent's side: frames as it sends them, and how often the relay released its link."""

    def __init__(self, frames: list[pb.Frame]) -> None:
        self._frames = list(frames)
        self.released = 0

    async def incoming(self) -> pb.Frame:
        if not self._frames:
            raise TransportError("the agent sent no data")
        return self._frames.pop(0)

    async def release(self) -> None:
        self.released += 1


def regular(path: str, data: bytes, *, destination: int = pb.CHECKPOINT, digest: bytes | None = None,
            size: int | None = None, chunk: int = 3) -> list[pb.Frame]:
    frames = [pb.Frame(file_start=pb.FileStart(destination=destination, path=path, kind=pb.REGULAR,  # type: ignore[arg-type]
                                               size=len(data) if size is None else size, mode=0o600, uid=7,
                                               mtime_ns=11))]
    frames += [pb.Frame(file_data=pb.FileData(data=data[i:i + chunk])) for i in range(0, len(data), chunk)]
    frames.append(pb.Frame(file_end=pb.FileEnd(sha256=hashlib.sha256(data).digest() if digest is None else digest)))
    return frames


def other(path: str, kind: int, *, link_target: str = "", opaque: bool = False) -> list[pb.Frame]:
    return [pb.Frame(file_start=pb.FileStart(destination=pb.ROOTFS, path=path, kind=kind,  # type: ignore[arg-type]
                                             link_target=link_target, opaque=opaque, mode=0o755)),
            pb.Frame(file_end=pb.FileEnd())]


async def take(relay: Relay) -> list[tuple[OutgoingFile, bytes]]:
    """As send_files takes them: each file's data read whole before the next file is asked for."""
    taken = []
    async for spec in relay.files():
        data = b""
        if spec.stream is not None:
            async for block in spec.stream():
                data += block
        taken.append((spec, data))
    return taken


async def test_files_pass_in_order_with_their_metadata_and_the_link_is_released_after_the_last() -> None:
    volume = regular("data/v.bin", b"vol", destination=pb.VOLUME)
    volume[0].file_start.volume = "cache"
    frames = Frames([*regular("pages-1.img", b"0123456789"), *other("etc", pb.DIRECTORY, opaque=True),
                     *other("etc/link", pb.SYMLINK, link_target="../x"), *other("gone", pb.WHITEOUT),
                     *volume, *regular("empty", b"")])
    relay = Relay(frames, 6, release=frames.release)
    taken = await take(relay)
    assert [(s.destination, s.path, s.kind) for s, _ in taken] == [
        (pb.CHECKPOINT, "pages-1.img", pb.REGULAR), (pb.ROOTFS, "etc", pb.DIRECTORY),
        (pb.ROOTFS, "etc/link", pb.SYMLINK), (pb.ROOTFS, "gone", pb.WHITEOUT),
        (pb.VOLUME, "data/v.bin", pb.REGULAR), (pb.CHECKPOINT, "empty", pb.REGULAR)]
    first, data = taken[0]
    assert data == b"0123456789" and (first.size, first.mode, first.uid, first.mtime_ns) == (10, 0o600, 7, 11)
    assert taken[1][0].opaque and taken[2][0].link_target == "../x" and taken[2][0].stream is None
    assert taken[4][0].volume == "cache" and taken[4][1] == b"vol"
    assert taken[5][1] == b"" and taken[5][0].size == 0
    assert relay.bytes_relayed == 13
    assert first.vouched is not None and first.vouched() == hashlib.sha256(b"0123456789").digest()
    assert taken[1][0].vouched is None, "no data, no digest"
    assert frames.released == 1


@pytest.mark.parametrize(("frames", "error"), [
    (regular("core-1.img", b"abc", size=6), "is short: 3 of 6 bytes"),
    (regular("core-1.img", b"abcdefgh", size=6), "longer than its 6 bytes"),
    (regular("../escape", b"x"), "refused path '../escape'"),
    (regular("image.tar", b"x", destination=pb.IMAGE_TAR), "for destination"),
    ([pb.Frame(stored=pb.Stored(bytes=1))], "expected file_start from the device, got stored"),
    (regular("core-1.img", b"abc")[:2] + other("x", pb.DIRECTORY), "unexpected file_start from the device within"),
])
async def test_what_the_source_sent_wrong_fails_before_the_file_s_end_goes_on(frames: list[pb.Frame],
                                                                               error: str) -> None:
    source = Frames(frames)
    with pytest.raises(TransportError, match=error):
        await take(Relay(source, 1, release=source.release))
    assert source.released == 0, "the rollback releases the link, with the device told what to do"


async def test_a_compressed_chunk_the_daemon_did_not_ask_for_is_refused() -> None:
    frames = regular("core-1.img", b"abc")
    frames[1].file_data.codec = "zlib"
    source = Frames(frames)
    with pytest.raises(TransportError, match="compressed"):
        await take(Relay(source, 1, release=source.release))


async def test_a_volume_named_as_a_path_is_refused() -> None:
    frames = regular("v.bin", b"x", destination=pb.VOLUME)
    frames[0].file_start.volume = "a/b"
    source = Frames(frames)
    with pytest.raises(TransportError, match="volume"):
        await take(Relay(source, 1, release=source.release))


async def test_a_file_whose_data_was_not_taken_stops_the_relay() -> None:
    source = Frames([*regular("a", b"123"), *regular("b", b"456")])
    files = Relay(source, 2, release=source.release).files()
    await anext(files)  # its data never read
    with pytest.raises(TransportError, match="'a' from the device was not relayed whole"):
        await anext(files)


async def test_a_link_that_fails_mid_file_fails_the_stream() -> None:
    source = Frames(regular("pages-1.img", b"0123456789")[:2])  # then nothing: the link's idle deadline
    with pytest.raises(TransportError, match="sent no data"):
        await take(Relay(source, 1, release=source.release))


def _plan(**changes: object) -> Plan:
    fields: dict[str, object] = {"inspect": {}, "target": TargetPlan({"Image": "x"}), "cross": None,
                                 "emulated": None, "recode": RecodeOptions("x86_64"), "lazy": False, "estimate": 0}
    return Plan(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "relayed"), [
    ({}, True),
    ({"lazy": True, "flat": True}, False),  # the flat freeze's files are few; its pages come another way
    ({"cross": CrossIsa((1,), "x86_64", VdsoTemplate(*read_vdso(), 4096), ())}, False),  # the recode reads them
    ({"recode": RecodeOptions("x86_64", profile="android")}, False),
    ({"recode": RecodeOptions("x86_64", cgroup_v1_to_v2=True)}, False),
    ({"emulated": Emulated("/usr/bin/qemu-x86_64", "10.0.2")}, False),  # its plan is made from the images
])
def test_a_move_relays_only_when_nothing_reads_the_images_whole(changes: dict[str, object], relayed: bool) -> None:
    assert relays(_plan(**changes)) is relayed


class AckingChannel(Channel):
    """The target's end: every file's end is acknowledged as it is written."""

    def write(self, data: bytes) -> None:
        super().write(data)
        frame = pb.Frame()
        frame.ParseFromString(data[4:])
        if frame.WhichOneof("body") == "file_end":
            ack = pb.FileAck(stream_id=frame.file_end.stream_id, ok=True)
            self.reader.feed_data(encode_frame(pb.Frame(file_ack=ack)))


async def test_the_target_gets_each_file_s_digest_from_its_origin() -> None:
    """Sent by the transport, a relayed file ends with the device's own digest, not one made on the way: the
    target checks its bytes against the origin's (here the device's second digest is wrong, and goes on as it is,
    for the target to refuse)."""
    wrong = b"\1" * 32
    source = Frames([*regular("pages-1.img", b"p" * 5000, chunk=1000), *regular("core-1.img", b"c", digest=wrong)])
    channel = AckingChannel()
    link = link_on(channel)
    try:
        sent = await link.send_files(Relay(source, 2, release=source.release).files())
    finally:
        await link.close()
    frames = []
    for data in channel.written:
        frame = pb.Frame()
        frame.ParseFromString(data[4:])
        frames.append(frame)
    ends = [f.file_end.sha256 for f in frames if f.WhichOneof("body") == "file_end"]
    assert ends == [hashlib.sha256(b"p" * 5000).digest(), wrong]
    assert b"".join(f.file_data.data for f in frames if f.WhichOneof("body") == "file_data") == b"p" * 5000 + b"c"
    assert (sent.files_sent, sent.bytes_sent, source.released) == (2, 5001, 1)
