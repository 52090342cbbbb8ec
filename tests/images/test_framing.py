"""Unit tests of the framing on synthetic images built with the codec's writer."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest
from google.protobuf.unknown_fields import UnknownFieldSet

from androcond.images import (
    MAGICS,
    Entry,
    ImageFormatError,
    ImageHeader,
    ImageKind,
    ImageReader,
    ImageWriter,
    copy_image,
    open_image,
    pb,
    read_image,
    roundtrip_dir,
    roundtrip_file,
    show_image,
    show_reader,
    write_image,
)

from .builders import common, sample_images, u32


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    for name, data in sample_images().items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_every_kind_roundtrips_byte_identically(sample_dir: Path, tmp_path: Path) -> None:
    assert roundtrip_dir(sample_dir) == dict.fromkeys(sample_images())
    out = tmp_path / "out"
    out.mkdir()
    for name, data in sample_images().items():
        write_image(out / name, read_image(sample_dir / name))
        assert (out / name).read_bytes() == data, name
        copy_image(sample_dir / name, out / name)
        assert (out / name).read_bytes() == data, name


@pytest.mark.parametrize(
    ("name", "kind", "magic"),
    [
        ("inventory.img", ImageKind.INVENTORY, "INVENTORY"),
        ("core-1.img", ImageKind.COMMON, "CORE"),
        ("stats-dump", ImageKind.SERVICE, "STATS"),
        ("pages-1.img", ImageKind.RAW, "RAW"),
        ("route6-9.img", ImageKind.RAW, "RAW"),
        ("dump.log", ImageKind.RAW, "RAW"),
        ("future-7.img", ImageKind.COMMON, "UNKNOWN(0x12345678)"),
    ],
)
def test_header_kinds(sample_dir: Path, name: str, kind: ImageKind, magic: str) -> None:
    with open_image(sample_dir / name) as reader:
        assert reader.header.kind is kind
        assert reader.header.name == magic


@pytest.mark.parametrize(
    ("name", "payloads"),
    [
        ("pipes-data.img", [b"hello"]),
        ("fifo-data.img", [b"hi"]),
        ("sk-queues.img", [b"pkt1", b""]),
        ("tcp-stream-1a.img", [b"inqOQ"]),
        ("ghost-file-1.img", [b"data"]),
        ("bpfmap-data.img", [b"k" * 8 + b"v" * 4]),
        ("ipcns-sem-1.img", [b"\1\0\2\0\3\0\0\0"]),
        ("ipcns-shm-1.img", [b"shmem\0\0\0", b""]),
    ],
)
def test_raw_payloads_are_carried_with_their_entry(sample_dir: Path, name: str, payloads: list[bytes]) -> None:
    image = read_image(sample_dir / name)
    assert [entry.extra for entry in image.entries] == payloads


def test_self_framed_payloads(sample_dir: Path) -> None:
    (msgq,) = read_image(sample_dir / "ipcns-msg-1.img").entries
    assert b"first" in msgq.extra and b"second!" in msgq.extra
    assert len(msgq.extra) % 8 == 0
    (ghost,) = read_image(sample_dir / "ghost-file-2.img").entries
    assert ghost.get(pb.ghost_file_entry).chunks
    assert ghost.extra.endswith(b"xyz")


def test_unknown_image_keeps_magic_and_opaque_entries(sample_dir: Path) -> None:
    image = read_image(sample_dir / "future-7.img")
    assert image.header.magic == 0x12345678
    assert [e.raw for e in image.entries] == [b"\x08\x01", b""]
    assert all(e.message is None for e in image.entries)
    # A caller who knows the type can still decode an opaque entry.
    assert image.entries[0].get(pb.pstree_entry).pid == 1


def test_untouched_entry_keeps_noncanonical_bytes() -> None:
    # Fields in reverse order plus an undeclared field 99: protobuf would re-encode this differently.
    raw = b"\x10\x07" + b"\x08\x05" + b"\x98\x06\x2a"
    data = common("PSTREE", Entry(raw))
    image = ImageReader(io.BytesIO(data), "pstree.img")
    entries = list(image.entries())
    msg = entries[0].get(pb.pstree_entry)
    assert (msg.pid, msg.ppid) == (5, 7)
    assert not entries[0].modified
    out = io.BytesIO()
    writer = ImageWriter(out, image.header)
    writer.write_entry(entries[0])
    assert out.getvalue() == data
    assert entries[0].encode(force=True) != raw  # canonical order differs: why we keep raw bytes


def test_changed_entry_is_reencoded_with_unknown_fields() -> None:
    core = pb.core_entry(mtype=1)
    core.tc.comm = "before"
    # Unknown fields at top level (ids = 4) and nested in thread_core (sas = 7).
    raw = core.SerializeToString() + b"\x22\x02\x08\x01" + b"\x2a\x04\x3a\x02\x08\x09"
    reader = ImageReader(io.BytesIO(common("CORE", Entry(raw))), "core-1.img")
    (entry,) = reader.entries()
    msg = entry.get(pb.core_entry)
    msg.tc.comm = "after"
    msg.mtype = 3
    assert entry.modified
    out = io.BytesIO()
    ImageWriter(out, reader.header).write_entry(entry)
    (again,) = ImageReader(io.BytesIO(out.getvalue()), "core-1.img").entries()
    decoded = again.get(pb.core_entry)
    assert (decoded.mtype, decoded.tc.comm) == (3, "after")
    assert [UnknownFieldSet(decoded)[i].field_number for i in range(len(UnknownFieldSet(decoded)))] == [4]
    assert len(UnknownFieldSet(decoded.thread_core)) == 1


def test_writer_refuses_payload_that_disagrees_with_entry() -> None:
    writer = ImageWriter(io.BytesIO(), ImageHeader.common("PIPES_DATA"))
    with pytest.raises(ValueError, match="announces 5 payload bytes"):
        writer.write_message(pb.pipe_data_entry(pipe_id=1, bytes=5), b"four")
    writer.write_message(pb.pipe_data_entry(pipe_id=1, bytes=4), b"four")


def test_entries_stream_one_at_a_time() -> None:
    data = common("PSTREE", *(pb.pstree_entry(pid=i) for i in range(1, 4))) + b"\xff"
    entries = ImageReader(io.BytesIO(data), "pstree.img").entries()
    assert next(entries).get(pb.pstree_entry).pid == 1  # available before the bad tail is reached
    assert next(entries).get(pb.pstree_entry).pid == 2
    assert next(entries).get(pb.pstree_entry).pid == 3
    with pytest.raises(ImageFormatError):
        next(entries)


def test_pages_stream_in_bounded_chunks(tmp_path: Path) -> None:
    pages = tmp_path / "pages-3.img"
    with pages.open("wb") as f:
        for i in range(24):
            f.write(bytes([i]) * (1 << 20))
    with open_image(pages, chunk_size=1 << 18) as reader:
        assert max(len(chunk) for chunk in reader.raw_chunks()) == 1 << 18
    tracemalloc.start()
    try:
        assert roundtrip_file(pages) is None
        copy_image(pages, tmp_path / "copy.img")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # 24 MiB went through, a few chunks at most were held
    assert (tmp_path / "copy.img").read_bytes() == pages.read_bytes()


def test_reencode_reports_first_difference(tmp_path: Path) -> None:
    path = tmp_path / "pstree.img"
    path.write_bytes(common("PSTREE", Entry(b"\x10\x07\x08\x05")))
    assert roundtrip_file(path) is None
    diff = roundtrip_file(path, reencode=True)
    assert diff is not None
    assert (diff.file, diff.offset) == ("pstree.img", 12)  # 8 bytes of magics + 4 of size


def test_show(sample_dir: Path) -> None:
    core = show_image(sample_dir / "core-1.img")
    assert core["magic"] == "CORE"
    assert core["entries"][0]["tc"]["comm"] == "sample"
    pipes = show_image(sample_dir / "pipes-data.img")
    assert pipes["entries"][0]["_extra"] == {"length": 5, "hex": b"hello".hex()}
    pages = show_image(sample_dir / "pages-1.img")
    assert pages["magic"] == "RAW"
    assert pages["size"] == 3 * 4096
    unknown = show_image(sample_dir / "future-7.img")
    assert unknown["entries"][0] == {"_opaque": {"length": 2, "hex": "0801"}}
    for name in sample_images():
        json.dumps(show_image(sample_dir / name))


def test_show_lists_undeclared_fields() -> None:
    data = common("PSTREE", Entry(b"\x08\x05\x98\x06\x2a"))
    shown = show_reader(ImageReader(io.BytesIO(data), "pstree.img"))
    assert shown["entries"] == [{"pid": 5, "_unknown": [99]}]


# -- malformed input: ImageFormatError naming the file and the byte offset

GOOD_PSTREE = common("PSTREE", pb.pstree_entry(pid=1), pb.pstree_entry(pid=2))


@pytest.mark.parametrize(
    ("name", "data", "offset", "reason"),
    [
        ("core-1.img", b"", 0, "truncated"),
        ("inventory.img", b"\x16\x31", 0, "truncated"),
        ("core-1.img", u32(0x54564319), 4, "per-type magic missing"),
        ("core-1.img", u32(0x54564319) + u32(MAGICS["MM"]), 4, "expected CORE magic, found MM"),
        ("inventory.img", u32(0x54564319) + u32(MAGICS["CORE"]), 0, "expected INVENTORY"),
        ("whatever.img", u32(0xDEADBEEF), 0, "unknown image magic"),
        ("whatever.img", u32(MAGICS["CORE"]), 0, "img_version 1"),
        ("pstree.img", GOOD_PSTREE[:-1], 14, "entry of 2 bytes runs past end of file"),
        ("pstree.img", GOOD_PSTREE + b"\x01\x00", 20, "truncated entry size"),
        ("pstree.img", GOOD_PSTREE + u32(1000) + b"\x08\x01", 20, "runs past end of file"),
        ("pstree.img", common("PSTREE", Entry(b"\x08\xff\xff")), 8, "cannot decode pstree_entry"),
        ("core-1.img", common("CORE", Entry(b"\x12\x05\x0a")), 8, "cannot decode core_entry"),
        (
            "pipes-data.img",
            common("PIPES_DATA", Entry(pb.pipe_data_entry(bytes=10).SerializeToString())) + b"short",
            8,
            "payload after pipe_data_entry",
        ),
        (
            "ipcns-msg-1.img",
            common("IPCNS_MSG", Entry(pb.ipc_msg_entry(qnum=3).SerializeToString())),
            14,
            "3 queued messages",
        ),
        (
            "ghost-file-1.img",
            common("GHOST_FILE", Entry(pb.ghost_file_entry(chunks=True).SerializeToString()))
            + u32(2)
            + b"\x08\x09"
            + b"abc",
            14,
            "ghost file chunk",
        ),
    ],
)
def test_malformed_input(name: str, data: bytes, offset: int, reason: str) -> None:
    def read_all() -> None:
        for entry in ImageReader(io.BytesIO(data), name).entries():
            assert entry is not None

    with pytest.raises(ImageFormatError) as info:
        read_all()
    err = info.value
    assert (err.file, err.offset) == (name, offset), str(err)
    assert reason in err.reason
    assert name in str(err) and f"offset {offset}" in str(err)


def test_unseekable_stream_detects_truncation() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            chunk = self._data.read(min(len(buffer), 3))  # short reads, like a pipe
            buffer[: len(chunk)] = chunk
            return len(chunk)

    data = GOOD_PSTREE + u32(0xFFFFFFF0) + b"\x08\x01"
    reader = ImageReader(io.BufferedReader(Pipe(data)), "pstree.img")
    with pytest.raises(ImageFormatError, match="truncated entry"):
        list(reader.entries())
