"""The plan format and make_plan's refusals, on small synthetic dumps written with our codec (fast tier)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from google.protobuf.message import Message

from androcond.emulation import plan as P
from androcond.emulation import wire
from androcond.emulation.plan import MOUNT, EmulationRefused, entrypoint, make_plan
from androcond.errors import AndrocondError
from androcond.images import Entry, ImageHeader, ImageWriter, pb, read_image
from androcond.protocol import restorer_plan as RP

PID = 42
EXE = "/usr/bin/prog"


def _write(path: Path, magic: str, *entries: Message | Entry) -> None:
    with path.open("wb") as f:
        writer = ImageWriter(f, ImageHeader.common(magic))
        for item in entries:
            writer.write_entry(item if isinstance(item, Entry) else Entry.from_message(item))


def _raw(message: Message, *extra: tuple[int, int | bytes | str]) -> Entry:
    """A message plus fields our schema does not declare (carried as unknown fields)."""
    return Entry(message.SerializeToString() + wire.encode(*extra))


def _reg(file_id: int, name: str, mode: int = 0o100644, flags: int = 0, pos: int = 0) -> Entry:
    return Entry.from_message(
        pb.file_entry(type=1, id=file_id, reg=pb.reg_file_entry(id=file_id, name=name, mode=mode, flags=flags, pos=pos))
    )


def _inet(file_id: int, state: int, sport: int, dport: int = 0, stype: int = 1) -> Entry:
    isk = wire.encode((1, file_id), (3, 2), (4, stype), (5, 6 if stype == 1 else 17), (6, state), (7, sport))
    isk += wire.encode((8, dport), (9, 0o4002), (10, 16), (11, 0x0100007F), (12, 0x0100007F))
    return _raw(pb.file_entry(type=4, id=file_id), (4, isk))


def make_dump(
    tmp: Path,
    *,
    threads: tuple[int, ...] = (PID,),
    processes: int = 1,
    extra_files: tuple[Entry, ...] = (),
    extra_fds: tuple[pb.fdinfo_entry, ...] = (),
    extra_vmas: tuple[pb.vma_entry, ...] = (),
    xstate_bv: int = 0x3,
) -> Path:
    images = tmp / "images"
    images.mkdir()
    tree = [pb.pstree_entry(pid=PID, ppid=0, pgid=PID, sid=PID, threads=list(threads))]
    tree += [pb.pstree_entry(pid=PID + n, ppid=PID, pgid=PID, sid=PID, threads=[PID + n]) for n in range(1, processes)]
    _write(images / "pstree.img", "PSTREE", *tree)
    sa_ignore = wire.encode((1, 1), (2, 0x04000000), (3, 0x7F0000001000), (4, 0))
    sa_handler = wire.encode((1, 0x401234), (2, 0x04000000), (3, 0x7F0000001000), (4, 1 << 9))
    sa_default = wire.encode((1, 0), (2, 0), (3, 0), (4, 0))
    sigactions = [(15, sa_ignore), (15, sa_handler)] + [(15, sa_default)] * 60
    for n, tid in enumerate(threads):
        core = pb.core_entry(mtype=1)
        core.thread_info.clear_tid_addr = 0x7F0000002000 + 0x100 * n
        core.thread_info.gpregs.ip = 0x401000 + n
        core.thread_info.gpregs.sp = 0x7FFF0000F000 - 0x100 * n
        core.thread_info.gpregs.fs_base = 0x7F0000003000 + 0x100 * n
        core.thread_info.gpregs.mode = 1
        core.thread_info.fpregs.mxcsr = 0x1F80
        core.thread_info.fpregs.xmm_space.extend(range(64))
        core.thread_info.fpregs.xsave.xstate_bv = xstate_bv
        core.thread_core.blk_sigset = 1 << n
        if tid == PID:
            tc = wire.encode((6, "prog"), *sigactions)
            _write(images / f"core-{tid}.img", "CORE", _raw(core, (3, tc), (4, wire.encode((2, 7)))))
        else:
            _write(images / f"core-{tid}.img", "CORE", core)
    mm = pb.mm_entry()
    mm.vmas.add(start=0x400000, end=0x402000, pgoff=0, shmid=1, prot=5, flags=2, status=1 | 1 << 6, fd=-1)
    mm.vmas.add(start=0x600000, end=0x604000, prot=3, flags=0x22, status=1 | 1 << 9, fd=-1)
    mm.vmas.add(start=0x7FFF00000000, end=0x7FFF00010000, prot=3, flags=0x122, status=1 | 1 << 9, fd=-1)
    mm.vmas.add(start=0x7FFF10000000, end=0x7FFF10002000, prot=1, flags=0x22, status=1 | 1 << 9 | 1 << 12, fd=-1)
    mm.vmas.add(start=0x7FFF10002000, end=0x7FFF10004000, prot=5, flags=0x22, status=1 | 1 << 9 | 1 << 3, fd=-1)
    mm.vmas.add(start=0xFFFFFFFFFF600000, end=0xFFFFFFFFFF601000, prot=4, flags=0x22, status=1 << 2 | 1 << 9, fd=-1)
    mm.vmas.extend(extra_vmas)
    _write(images / f"mm-{PID}.img", "MM", mm)
    runs = [(0x401000, 1), (0x600000, 2), (0x7FFF0000E000, 2), (0x7FFF10002000, 2)]
    items: list[Message] = [pb.pagemap_head(pages_id=1)]
    items += [pb.pagemap_entry(vaddr=v, nr_pages64=n, flags=4) for v, n in runs]
    _write(images / f"pagemap-{PID}.img", "PAGEMAP", *items)
    (images / "pages-1.img").write_bytes(b"\xab" * 4096 * 7)
    files = [
        _reg(1, EXE, 0o100755),
        _reg(2, "/dev/null", 0o20666),
        _reg(3, "/var/log/prog.log", flags=0o2001, pos=1234),
        _inet(4, RP.TCP_LISTEN, 8080),
        _inet(5, RP.TCP_ESTABLISHED, 8080, 50000),
        _reg(6, "/srv", 0o40755),
        *extra_files,
    ]
    _write(images / "files.img", "FILES", *files)
    fds = [
        pb.fdinfo_entry(id=2, flags=0, type=1, fd=0),
        pb.fdinfo_entry(id=2, flags=0, type=1, fd=1),
        pb.fdinfo_entry(id=2, flags=0, type=1, fd=2),
        pb.fdinfo_entry(id=3, flags=1, type=1, fd=3),
        pb.fdinfo_entry(id=4, flags=1, type=4, fd=4),
        pb.fdinfo_entry(id=5, flags=0, type=4, fd=5),
        *extra_fds,
    ]
    _write(images / "fdinfo-7.img", "FDINFO", *fds)
    _write(images / f"fs-{PID}.img", "FS", Entry(wire.encode((1, 6), (2, 6))))
    return images


def records(plan: bytes) -> list[tuple[int, bytes]]:
    assert plan[:8] == RP.PLAN_MAGIC
    version, size = struct.unpack_from("<II", plan, 8)
    assert (version, size) == (RP.PLAN_VERSION, len(plan))
    out, pos = [], 16
    while pos < len(plan):
        kind, length = struct.unpack_from("<II", plan, pos)
        assert length % 8 == 0
        out.append((kind, plan[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    assert out[-1] == (RP.R_END, b"")
    return out


def cstring(payload: bytes) -> str:
    return payload[: payload.index(b"\0")].decode()


def test_the_plan_names_the_emulators_stub_socket(tmp_path: Path) -> None:
    images = make_dump(tmp_path)
    make_plan(images, tmp_path / "plan", mount="/m", stub="/.androcond-stub/gdb.sock")
    stubs = [cstring(payload) for kind, payload in records((tmp_path / "plan").read_bytes()) if kind == RP.R_STUB]
    assert stubs == ["/.androcond-stub/gdb.sock"]


def test_plan_of_a_simple_dump(tmp_path: Path) -> None:
    images = make_dump(tmp_path, threads=(PID, PID + 1))
    summary = make_plan(images, tmp_path / "plan", mount="/m")
    assert (summary.pid, summary.threads, summary.vmas, summary.fds, summary.listening) == (PID, 2, 5, 3, 1)
    assert summary.page_bytes == 7 * 4096
    assert any("fd 5" in n and "closed" in n for n in summary.notes)
    recs = records((tmp_path / "plan").read_bytes())
    by_kind: dict[int, list[bytes]] = {}
    for kind, payload in recs:
        by_kind.setdefault(kind, []).append(payload)
    assert cstring(by_kind[RP.R_STATUS][0]) == f"/m/{P.STATUS_NAME}"
    assert RP.R_STUB not in by_kind  # qemu runs no stub unless the plan is told
    assert cstring(by_kind[RP.R_PAGES_FILE][0]) == "/m/pages-1.img"
    assert cstring(by_kind[RP.R_CWD][0]) == "/srv"
    vmas = [struct.unpack_from("<QQQII", v) for v in by_kind[RP.R_VMA]]
    assert [(v[0], v[4]) for v in vmas] == [
        (0x400000, RP.VMA_FILE_PRIVATE),
        (0x600000, RP.VMA_ANON),
        (0x7FFF00000000, RP.VMA_ANON),
        (0x7FFF10000000, RP.VMA_VVAR),
        (0x7FFF10002000, RP.VMA_VDSO),
    ]
    assert cstring(by_kind[RP.R_VMA][0][40:]) == EXE
    pages = [struct.unpack("<QQQ", p) for p in by_kind[RP.R_PAGES]]
    assert pages == [
        (0x401000, 4096, 0),
        (0x600000, 8192, 4096),
        (0x7FFF0000E000, 8192, 3 * 4096),
        (0x7FFF10002000, 8192, 5 * 4096),
    ]
    fds = {struct.unpack_from("<i", f)[0]: f for f in by_kind[RP.R_FD]}
    assert sorted(fds) == [3, 4, 5]
    _, kind, flags, fdflags, pos = struct.unpack_from("<iIIIQ", fds[3])
    assert (kind, flags, fdflags, pos, cstring(fds[3][64:])) == (RP.FD_FILE, 0o2001, 1, 1234, "/var/log/prog.log")
    listen = struct.unpack_from("<iIIIQIIIIII16s", fds[4])
    assert listen[1] == RP.FD_LISTEN and listen[2] == 0o4000 and listen[5:11] == (2, 1, 6, 8080, 16, 0)
    assert listen[11][:4] == bytes([127, 0, 0, 1])
    assert struct.unpack_from("<iI", fds[5])[1] == RP.FD_SOCKET
    sigs = [struct.unpack("<IIQQQQ", s) for s in by_kind[RP.R_SIGACTION]]
    assert [(s[0], s[2], s[5]) for s in sigs] == [(1, 1, 0), (2, 0x401234, 1 << 9)]
    threads = [struct.unpack_from("<IIQQQQQQQ", t) for t in by_kind[RP.R_THREAD]]
    # Neither libc's TID copy is in this dump's memory: no address to write the new TID to, and a note says so.
    assert [(t[0], t[1], t[2], t[3], t[4], t[8]) for t in threads] == [
        (PID, 1, 0x7F0000002000, 1, 0x7F0000003000, 0),
        (PID + 1, 0, 0x7F0000002100, 2, 0x7F0000003100, 0),
    ]
    assert sum("copy of its TID was not found" in n for n in summary.notes) == 2
    regs = struct.unpack_from("<18Q", by_kind[RP.R_THREAD][0], 64)
    assert regs[16] == 0x401000 and regs[15] == 0x7FFF0000F000  # rip, rsp in sigcontext order
    fx = by_kind[RP.R_THREAD][0][208:720]
    assert struct.unpack_from("<I", fx, 24)[0] == 0x1F80
    assert struct.unpack_from("<64I", fx, 160) == tuple(range(64))
    assert fx[464:] == bytes(48)  # no XSAVE magic: an FXSAVE-only frame


def test_status_path_and_entrypoint(tmp_path: Path) -> None:
    images = make_dump(tmp_path)
    make_plan(images, tmp_path / "plan", status="/run/fifo")
    assert cstring(records((tmp_path / "plan").read_bytes())[0][1]) == "/run/fifo"
    assert entrypoint("/usr/bin/qemu-x86_64") == [
        "/usr/bin/qemu-x86_64", "-B", "0", f"{MOUNT}/{P.RESTORER_NAME}", f"{MOUNT}/{P.PLAN_NAME}"
    ]
    assert entrypoint("qemu", "/x")[-2:] == [f"/x/{P.RESTORER_NAME}", f"/x/{P.PLAN_NAME}"]


def refusal(tmp_path: Path, **kwargs: object) -> str:
    images = make_dump(tmp_path, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(EmulationRefused) as info:
        make_plan(images, tmp_path / "plan")
    assert isinstance(info.value, AndrocondError)
    assert not (tmp_path / "plan").exists()
    return str(info.value)


def test_refuses_two_processes(tmp_path: Path) -> None:
    message = refusal(tmp_path, processes=2)
    assert "2 processes" in message and f"{PID + 1}" in message


@pytest.mark.parametrize(
    ("file_type", "field", "name"),
    [
        (5, 16, "unix socket"),
        (6, 8, "eventfd"),
        (7, 9, "epoll"),
        (9, 10, "signalfd"),
        (17, 12, "timerfd"),
        (8, 13, "inotify"),
        (18, 20, "memfd"),
    ],
)
def test_refuses_fd_kinds(tmp_path: Path, file_type: int, field: int, name: str) -> None:
    extra = _raw(pb.file_entry(type=file_type, id=9), (field, b""))
    message = refusal(tmp_path, extra_files=(extra,), extra_fds=(pb.fdinfo_entry(id=9, flags=0, type=file_type, fd=7),))
    assert f"fd 7 is a {name}" in message


def test_refuses_pipes_and_ttys_beyond_stdio(tmp_path: Path) -> None:
    pipe = _raw(pb.file_entry(type=2, id=9), (18, b""))
    tty = _raw(pb.file_entry(type=11, id=10), (19, b""))
    fds = (pb.fdinfo_entry(id=9, type=2, fd=8), pb.fdinfo_entry(id=10, type=11, fd=9))
    message = refusal(tmp_path, extra_files=(pipe, tty), extra_fds=fds)
    assert "fd 8 is a pipe" in message and "fd 9 is a tty" in message


def test_stdio_pipes_are_left_to_the_container(tmp_path: Path) -> None:
    pipe = _raw(pb.file_entry(type=2, id=9), (18, b""))
    images = make_dump(tmp_path, extra_files=(pipe,))
    fdinfo = images / "fdinfo-7.img"
    fds = [pb.fdinfo_entry(id=9, type=2, fd=1), pb.fdinfo_entry(id=3, flags=1, type=1, fd=3)]
    _write(fdinfo, "FDINFO", *fds)
    summary = make_plan(images, tmp_path / "plan")
    assert summary.fds == 1 and any("fd 1 (pipe)" in n for n in summary.notes)


@pytest.mark.parametrize(
    ("status", "what"),
    [(1 << 8, "shared anonymous memory"), (1 << 10, "SysV shared memory"), (1 << 14, "a memfd mapping")],
)
def test_refuses_shared_memory(tmp_path: Path, status: int, what: str) -> None:
    vma = pb.vma_entry(start=0x10000000, end=0x10001000, prot=3, flags=1, status=1 | status, fd=-1)
    assert f"mapping 0x10000000-0x10001000 is {what}" in refusal(tmp_path, extra_vmas=(vma,))


def test_refuses_avx512_state(tmp_path: Path) -> None:
    message = refusal(tmp_path, threads=(PID, PID + 1), xstate_bv=0xE7)
    assert f"thread {PID}" in message and "AVX-512" in message and "GLIBC_TUNABLES" in message


def test_refuses_rseq(tmp_path: Path) -> None:
    images = make_dump(tmp_path)
    core = read_image(images / f"core-{PID}.img").entries[0]
    rseq = wire.encode((5, wire.encode((15, wire.encode((1, 0x7F0000004000), (2, 32), (3, 0x53053053))))))
    _write(images / f"core-{PID}.img", "CORE", Entry(core.raw + rseq))
    with pytest.raises(EmulationRefused, match=r"rseq registered.*glibc\.pthread\.rseq=0"):
        make_plan(images, tmp_path / "plan")


def test_refuses_file_locks(tmp_path: Path) -> None:
    images = make_dump(tmp_path)
    _write(images / "file-locks.img", "FILES", Entry(wire.encode((1, 1), (2, 1))))
    with pytest.raises(EmulationRefused, match="file lock"):
        make_plan(images, tmp_path / "plan")


def test_refuses_lazy_pages(tmp_path: Path) -> None:
    images = make_dump(tmp_path)
    items = [pb.pagemap_head(pages_id=1), pb.pagemap_entry(vaddr=0x600000, nr_pages64=1, flags=2)]
    _write(images / f"pagemap-{PID}.img", "PAGEMAP", *items)
    (images / "pages-1.img").write_bytes(b"")
    with pytest.raises(EmulationRefused, match="lazy"):
        make_plan(images, tmp_path / "plan")


def test_wire_roundtrip() -> None:
    data = wire.encode((1, 300), (2, b"abc"), (3, "x"), (1, 5))
    fields = wire.parse(data)
    assert wire.get_int(fields, 1) == 5 and wire.get_ints(fields, 1) == [300, 5]
    assert wire.get_bytes(fields, 2) == b"abc" and wire.get_str(fields, 3) == "x"
    assert wire.get_int(fields, 9, 7) == 7
