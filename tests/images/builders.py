"""Synthetic CRIU images built with the codec's own writer, for unit and property tests."""

from __future__ import annotations

import io
import struct

from google.protobuf.message import Message

from androcond.images import MAGICS, Entry, ImageHeader, ImageKind, ImageWriter, pb

u32 = struct.Struct("<I").pack


def build(header: ImageHeader, *entries: Message | tuple[Message, bytes] | Entry) -> bytes:
    """An image: header, then each entry (a message, a (message, payload) pair or a ready Entry)."""
    out = io.BytesIO()
    writer = ImageWriter(out, header)
    for item in entries:
        if isinstance(item, Entry):
            writer.write_entry(item)
        elif isinstance(item, tuple):
            writer.write_message(*item)
        else:
            writer.write_message(item)
    return out.getvalue()


def common(name: str, *entries: Message | tuple[Message, bytes] | Entry) -> bytes:
    return build(ImageHeader.common(name), *entries)


def pagemap_image(pages_id: int, *runs: tuple[int, int, int]) -> bytes:
    """runs: (vaddr, nr_pages, flags)."""
    items: list[Message] = [pb.pagemap_head(pages_id=pages_id)]
    items += [pb.pagemap_entry(vaddr=v, nr_pages=n, flags=f) for v, n, f in runs]
    return common("PAGEMAP", *items)


def ipc_msg_payload(*bodies: bytes) -> bytes:
    parts = []
    for mtype, body in enumerate(bodies, start=1):
        head = pb.ipc_msg(mtype=mtype, msize=len(body)).SerializeToString()
        pad = -len(body) % 8
        parts.append(u32(len(head)) + head + body + b"\0" * pad)
    return b"".join(parts)


def ghost_chunks_payload(*chunks: tuple[int, bytes]) -> bytes:
    parts = []
    for off, data in chunks:
        head = pb.ghost_chunk_entry(len=len(data), off=off).SerializeToString()
        parts.append(u32(len(head)) + head + data)
    return b"".join(parts)


def sample_images() -> dict[str, bytes]:
    """One valid image of every kind the codec distinguishes, keyed by file name."""
    core = pb.core_entry(mtype=1)
    core.tc.comm = "sample"
    core.thread_info.gpregs.ip = 0x401000
    core.thread_core.creds.lsm_profile = "docker-default"
    mm = pb.mm_entry(mm_start_code=0x400000)
    mm.vmas.add(start=0x400000, end=0x401000, prot=5, flags=2, status=1, fd=-1)
    stats = pb.stats_entry()
    stats.dump.pages_written = 3
    return {
        "inventory.img": build(ImageHeader.inventory(), pb.inventory_entry(img_version=2, lsmtype=2)),
        "core-1.img": common("CORE", core),
        "mm-1.img": common("MM", mm),
        "pstree.img": common("PSTREE", pb.pstree_entry(pid=1, ppid=0, pgid=1, sid=1, threads=[1, 2])),
        "files.img": common("FILES", pb.file_entry(type=1, id=1, reg=pb.reg_file_entry(id=1, name="/bin/x"))),
        "mountpoints-5.img": common("MNTS", pb.mnt_entry(mnt_id=1, mountpoint="/")),
        "pagemap-1.img": pagemap_image(1, (0x1000, 2, 4), (0x5000, 1, 1), (0x9000, 1, 6)),
        "pages-1.img": b"A" * 4096 * 2 + b"B" * 4096,
        "stats-dump": build(ImageHeader(ImageKind.SERVICE, MAGICS["STATS"]), stats),
        "pipes-data.img": common("PIPES_DATA", (pb.pipe_data_entry(pipe_id=7, bytes=5, size=65536), b"hello")),
        "fifo-data.img": common("FIFO_DATA", (pb.pipe_data_entry(pipe_id=8, bytes=2), b"hi")),
        "sk-queues.img": common(
            "SK_QUEUES", (pb.sk_packet_entry(id_for=3, length=4), b"pkt1"), (pb.sk_packet_entry(length=0), b"")
        ),
        "tcp-stream-1a.img": common("TCP_STREAM", (pb.tcp_stream_entry(inq_len=3, outq_len=2), b"inqOQ")),
        "ghost-file-1.img": common("GHOST_FILE", (pb.ghost_file_entry(chunks=False, size=4), b"data")),
        "ghost-file-2.img": common(
            "GHOST_FILE",
            (pb.ghost_file_entry(chunks=True, size=9000), ghost_chunks_payload((0, b"abc"), (8192, b"xyz"))),
        ),
        "bpfmap-data.img": common(
            "BPFMAP_DATA", (pb.bpfmap_data_entry(map_id=1, keys_bytes=8, values_bytes=4, count=2), b"k" * 8 + b"v" * 4)
        ),
        "ipcns-sem-1.img": common("IPCNS_SEM", (pb.ipc_sem_entry(nsems=3), b"\1\0\2\0\3\0\0\0")),
        "ipcns-msg-1.img": common(
            "IPCNS_MSG", (pb.ipc_msg_entry(qnum=2, qbytes=12), ipc_msg_payload(b"first", b"second!"))
        ),
        "ipcns-shm-1.img": common(
            "IPCNS_SHM",
            (pb.ipc_shm_entry(size=6, in_pagemaps=False), b"shmem\0\0\0"),
            (pb.ipc_shm_entry(size=4096, in_pagemaps=True), b""),
        ),
        "seccomp.img": build(ImageHeader.common("SECCOMP"), Entry(b"\x0a\x03abc")),
        "future-7.img": build(ImageHeader(ImageKind.COMMON, 0x12345678), Entry(b"\x08\x01"), Entry(b"")),
        "tmpfs-dev-12.tar.gz.img": b"\x1f\x8b\x08" + bytes(range(256)),
        "route6-9.img": b"",
        "dump.log": b"(00.000) not an image\n",
    }
