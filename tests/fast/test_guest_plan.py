"""The restorer's plan from an emulated process's readout (agent/guest_plan.py), on this test process's own
memory: write_plan reads the guest's pages from /proc/<pid>/mem, so a GuestState that describes mappings of our
own makes the pages real. (The readout and a native resume from such a plan are proven against a real qemu on
the arm64 bed.)"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from androcond.agent.guest_plan import (
    GLIBC_TID_OFFSET,
    PAGES_NAME,
    USER_TOP,
    GuestPlanRefused,
    fxsave,
    write_plan,
)
from androcond.agent.guest_state import GuestMapping, GuestState, GuestThread
from androcond.protocol import restorer_plan as rp
from androcond.protocol.emulation import PLAN

PAGE = mmap.PAGESIZE
TID = 4321


@pytest.fixture
def memory() -> Iterator[tuple[mmap.mmap, int]]:
    area = mmap.mmap(-1, 3 * PAGE)
    view = ctypes.c_char.from_buffer(area)
    address = ctypes.addressof(view)
    del view  # no export left: the area can be closed
    try:
        yield area, address
    finally:
        area.close()


def thread(tid: int, **values: int) -> GuestThread:
    names = [*rp.GP_ORDER, "fs_base", "gs_base", "orig_rax", "fctrl", "fstat", "ftag", "fop", "fioff", "fooff",
             "mxcsr"]
    regs = {name: values.get(name, 0).to_bytes(8, "little") for name in names}
    regs |= {f"st{i}": bytes([i]) * 10 for i in range(8)} | {f"xmm{i}": bytes([0x40 + i]) * 16 for i in range(16)}
    return GuestThread(tid, regs)


def records(plan: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 16
    while pos < len(plan):
        kind, length = struct.unpack_from("<II", plan, pos)
        out.append((kind, plan[pos + 8:pos + 8 + length]))
        pos += 8 + length
    return out


def test_the_plan_carries_the_guests_memory_threads_and_registers(tmp_path: Path,
                                                                  memory: tuple[mmap.mmap, int]) -> None:
    area, base = memory
    area[:PAGE] = bytes(range(256)) * (PAGE // 256)
    area[PAGE:PAGE + 2] = b"\x0f\x05"  # a syscall instruction, where the thread stopped right after
    area[PAGE + GLIBC_TID_OFFSET:PAGE + GLIBC_TID_OFFSET + 4] = TID.to_bytes(4, "little")  # glibc's pd->tid
    maps = (GuestMapping(base, base + PAGE, "rw-p", 0, ""),
            GuestMapping(base + PAGE, base + 2 * PAGE, "r-xp", 0x3000, "/bin/heap"),
            GuestMapping(base + 2 * PAGE, base + 3 * PAGE, "---p", 0, ""),
            GuestMapping(0x7FFFFFFFF000 + PAGE, 0x7FFFFFFFF000 + 2 * PAGE, "rw-p", 0, ""),  # qemu's, above
            GuestMapping(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, "--xp", 0, "[vsyscall]"))
    main = thread(TID, rip=base + PAGE + 2, rax=230, orig_rax=230, rsp=base + 64, fs_base=base + PAGE,
                  fctrl=0x37F, mxcsr=0x1F80, ftag=0xFFF0)  # st0 and st1 in use, the rest empty
    other = thread(TID + 1, rip=base + PAGE + 2, rax=(-4) & (2**64 - 1), orig_rax=230, rsp=base + 128)
    state = GuestState(TID, "/.androcond/androcond-restorer", (main, other), maps, "/srv")
    summary = write_plan(state, os.getpid(), tmp_path, mount="/m", status="/m/status")

    assert (summary.threads, summary.vmas, summary.page_bytes) == (2, 3, 2 * PAGE)
    assert any("above the x86_64 user space" in note for note in summary.notes)
    recs = records((tmp_path / PLAN).read_bytes())
    by_kind: dict[int, list[bytes]] = {}
    for kind, payload in recs:
        by_kind.setdefault(kind, []).append(payload)
    assert by_kind[rp.R_CWD][0].rstrip(b"\0") == b"/srv"
    assert by_kind[rp.R_PAGES_FILE][0].rstrip(b"\0") == f"/m/{PAGES_NAME}".encode()
    vmas = [struct.unpack_from("<QQQII", v) for v in by_kind[rp.R_VMA]]
    assert vmas == [(base, base + PAGE, 0, 3, rp.VMA_ANON),
                    (base + PAGE, base + 2 * PAGE, 0x3000, 5, rp.VMA_FILE_PRIVATE),
                    (base + 2 * PAGE, base + 3 * PAGE, 0, 0, rp.VMA_ANON)]
    assert by_kind[rp.R_VMA][1][40:].rstrip(b"\0") == b"/bin/heap"
    # Every readable mapping's bytes, in order; the guard page has none.
    pages = (tmp_path / PAGES_NAME).read_bytes()
    assert [struct.unpack("<QQQ", p) for p in by_kind[rp.R_PAGES]] == [(base, PAGE, 0), (base + PAGE, PAGE, PAGE)]
    assert pages == area[:2 * PAGE]
    first, second = by_kind[rp.R_THREAD]
    tid, is_main, clear_tid, _mask, fs_base = struct.unpack_from("<IIQQQ", first)
    assert (tid, is_main, fs_base) == (TID, 1, base + PAGE)
    assert clear_tid == base + PAGE + GLIBC_TID_OFFSET  # found where glibc keeps it
    gp = struct.unpack_from("<18Q", first, 64)
    assert gp[rp.GP_ORDER.index("rip")] == base + PAGE, "stopped inside a syscall: it runs again at home"
    assert struct.unpack_from("<18Q", second, 64)[rp.GP_ORDER.index("rip")] == base + PAGE + 2, \
        "a syscall that returned (EINTR) is not run again"
    image = first[64 + 18 * 8:]
    assert len(image) == 512 and image[:2] == b"\x7f\x03" and image[4] == 0b11  # abridged tags: st0, st1 used


def test_what_cannot_exist_natively_is_refused(tmp_path: Path, memory: tuple[mmap.mmap, int]) -> None:
    _area, base = memory
    maps = (GuestMapping(base, base + PAGE, "rw-p", 0, ""),)
    high = thread(TID, rsp=USER_TOP + PAGE)
    with pytest.raises(GuestPlanRefused, match=r"rsp .* above the x86_64 user space"):
        write_plan(GuestState(TID, "", (high,), maps, "/"), os.getpid(), tmp_path, mount="/m")
    shared = (GuestMapping(base, base + PAGE, "rw-s", 0, "/dev/shm/x"),)
    with pytest.raises(GuestPlanRefused, match="shared"):
        write_plan(GuestState(TID, "", (thread(TID),), shared, "/"), os.getpid(), tmp_path, mount="/m")
    unmapped = (GuestMapping(0x1000, 0x2000, "rw-p", 0, ""),)  # not mapped in this process: EIO
    with pytest.raises(GuestPlanRefused, match="could not be read"):
        write_plan(GuestState(TID, "", (thread(TID),), unmapped, "/"), os.getpid(), tmp_path, mount="/m")
    assert not (tmp_path / PLAN).exists()


def test_the_fxsave_image_of_the_x87_and_sse_registers() -> None:
    image = fxsave(thread(1, fctrl=0x37F, fstat=0x20, ftag=0xFFFF, fop=7, mxcsr=0x1FA0))
    assert struct.unpack_from("<HHB", image, 0) == (0x37F, 0x20, 0)  # every register empty
    assert struct.unpack_from("<II", image, 24) == (0x1FA0, 0xFFFF)
    assert image[32 + 16 * 3:32 + 16 * 3 + 10] == bytes([3]) * 10 and image[32 + 16 * 3 + 10:32 + 16 * 4] == bytes(6)
    assert image[160 + 16 * 15:176 + 16 * 15] == bytes([0x4F]) * 16


def test_all_zero_anonymous_pages_are_not_carried(tmp_path: Path, memory: tuple[mmap.mmap, int]) -> None:
    """The restorer maps anonymous memory zero-filled: of an anonymous mapping only the pages that hold
    something go into the pages file; a file-backed one goes whole (its zero page may hide the file's bytes)."""
    area, base = memory
    area[:PAGE] = b"\x01" * PAGE
    area[2 * PAGE:] = b"\x02" * PAGE  # the page between stays zero
    state = GuestState(TID, "", (thread(TID, rip=base, rsp=base + 64),),
                       (GuestMapping(base, base + 3 * PAGE, "rw-p", 0, ""),), "/")
    summary = write_plan(state, os.getpid(), tmp_path, mount="/m")
    pages = [struct.unpack("<QQQ", p) for k, p in records((tmp_path / PLAN).read_bytes()) if k == rp.R_PAGES]
    assert pages == [(base, PAGE, 0), (base + 2 * PAGE, PAGE, PAGE)]
    assert (tmp_path / PAGES_NAME).read_bytes() == b"\x01" * PAGE + b"\x02" * PAGE
    assert summary.page_bytes == 2 * PAGE
    assert any(f"{PAGE} bytes of all-zero anonymous pages" in note for note in summary.notes), summary.notes

    area[:] = bytes(3 * PAGE)  # wholly zero: nothing carried at all
    file_backed = GuestState(TID, "", (thread(TID, rip=base, rsp=base + 64),),
                             (GuestMapping(base, base + 3 * PAGE, "rw-p", 0, "/bin/heap"),), "/")
    assert write_plan(file_backed, os.getpid(), tmp_path, mount="/m").page_bytes == 3 * PAGE
    zero = GuestState(TID, "", (thread(TID, rip=base, rsp=base + 64),),
                      (GuestMapping(base, base + 3 * PAGE, "rw-p", 0, ""),), "/")
    assert write_plan(zero, os.getpid(), tmp_path, mount="/m").page_bytes == 0
