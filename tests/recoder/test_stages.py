"""The stages on synthetic dumps built with our own writer, for the cases a real dump rarely shows: PARENT
pages before the register page (criu-het's offset walk ignores page flags), pagemap entries straddling the
vdso, CRIU 4.2's 64-bit page count, multi-threaded tasks, nested mounts."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from androcond.images import PE_LAZY, PE_PARENT, PE_PRESENT, ImageHeader, Pagemap, pb, read_image, write_image
from androcond.popcorn.notify import Regset
from androcond.recoder import (
    AbsentMountpoints,
    AndroidProfile,
    CgroupV1Mounts,
    ImageSet,
    PagemapCompat,
    RecodeError,
    RecodeOptions,
    VdsoTemplate,
    read_elf,
    recode,
)
from androcond.recoder.arch import auxv_words
from androcond.recoder.imageset import _copy_range

from ..images.builders import build, common
from .conftest import STANDIN, Builds

P = 4096
REGULAR, VSYSCALL, VDSO, ANON_PRIVATE, VVAR = 1, 1 << 2, 1 << 3, 1 << 9, 1 << 12
AARCH64_MAGIC = 0xAABCBDEADBEAF
X = tuple(0x1000 + i for i in range(31))
TLS = 0x7777_0000


@dataclass
class Layout:
    data_lo: int  # first page of the area holding regs_dst and tls_dst
    data_pages: int
    vvar: int
    vdso: int
    stack: int


def regset(sp: int = 0x5000, pc: int = 0x401000) -> bytes:
    return struct.pack("<3Q31Q", AARCH64_MAGIC, sp, pc, *X) + bytes(range(256)) * 2


def make_dump(directory: Path, builds: Builds, *, parent_before: bool = True, threads: tuple[int, ...] = (1,),
              straddle: bool = False, nr_pages64: bool = False, regs_present: bool = True,
              regs_lazy: bool = False) -> Layout:
    """A one-task x86_64 dump whose memory holds the stand-in's regs_dst/tls_dst with known values."""
    symbols = read_elf(builds.x86_64).symbols
    regs, tls = symbols["regs_dst"].address, symbols["tls_dst"].address
    lo = min(regs, tls) // P * P
    pages = (max(regs + 784, tls + 8) - lo + P - 1) // P
    data = bytearray(pages * P)
    data[regs - lo : regs - lo + 784] = regset()
    data[tls - lo : tls - lo + 8] = struct.pack("<Q", TLS)
    layout = Layout(lo, pages, vvar=0x7F00_0000_0000, vdso=0x7F00_0000_4000, stack=0x7FFF_0000_0000)

    def entry(vaddr: int, count: int, flags: int) -> pb.pagemap_entry:
        if nr_pages64:
            return pb.pagemap_entry(vaddr=vaddr, nr_pages=0, nr_pages64=count, flags=flags)
        return pb.pagemap_entry(vaddr=vaddr, nr_pages=count, flags=flags)

    vdso_bytes = b"\x7fELF-x86-vdso".ljust(2 * P, b"v")
    after_vdso = b"A" * P  # a page just above the vdso, in the same pagemap entry when `straddle`
    runs: list[pb.pagemap_entry] = []
    pages_file = b""
    if parent_before:
        runs.append(entry(lo - 16 * P, 3, PE_PARENT))  # in a parent dump: no bytes here
    # A lazy dump's anonymous memory (a runtime's .bss): in the pagemap, left to post-copy, no bytes here.
    flags = PE_LAZY if regs_lazy else PE_PRESENT if regs_present else PE_PARENT
    runs.append(entry(lo, pages, flags))
    pages_file += bytes(data) if flags == PE_PRESENT else b""
    if straddle:
        runs.append(entry(layout.vdso, 3, PE_PRESENT))
        pages_file += vdso_bytes + after_vdso
    else:
        runs.append(entry(layout.vdso, 2, PE_PRESENT))
        pages_file += vdso_bytes
    runs.append(entry(layout.stack, 1, PE_PRESENT | PE_LAZY))
    pages_file += b"S" * P

    mm = pb.mm_entry(exe_file_id=5, mm_saved_auxv=[6, P, 33, layout.vdso, 0, 0])
    vmas = [(lo - 16 * P, lo + pages * P, REGULAR | ANON_PRIVATE, 3)]
    if straddle:
        vmas.append((layout.vdso + 2 * P, layout.vdso + 3 * P, REGULAR | ANON_PRIVATE, 3))
    vmas += [(layout.vvar, layout.vdso, REGULAR | ANON_PRIVATE | VVAR, 1),
             (layout.vdso, layout.vdso + 2 * P, REGULAR | VDSO | ANON_PRIVATE, 5),
             (layout.stack, layout.stack + P, REGULAR | ANON_PRIVATE, 3),
             (0xFFFF_FFFF_FF60_0000, 0xFFFF_FFFF_FF60_1000, VSYSCALL | ANON_PRIVATE, 4)]
    for start, end, status, prot in vmas:
        mm.vmas.add(start=start, end=end, prot=prot, flags=0x22, status=status, fd=-1)

    directory.mkdir(parents=True)
    files = {
        "inventory.img": build(ImageHeader.inventory(), pb.inventory_entry(img_version=2)),
        "pstree.img": common("PSTREE", pb.pstree_entry(pid=threads[0], ppid=0, pgid=1, sid=1, threads=threads)),
        "files.img": common("FILES", pb.file_entry(type=1, id=5, reg=pb.reg_file_entry(
            id=5, name=f"/bin/{STANDIN}", size=builds.x86_64.stat().st_size, build_id=[1, 2, 3, 4, 5]))),
        f"mm-{threads[0]}.img": common("MM", mm),
        f"pagemap-{threads[0]}.img": common("PAGEMAP", pb.pagemap_head(pages_id=1), *runs),
        "pages-1.img": pages_file,
    }
    for tid in threads:
        core = pb.core_entry(mtype=1)
        core.thread_info.clear_tid_addr = 0x1234
        core.thread_info.gpregs.ip = 0x401000
        core.tc.comm = "standin"
        files[f"core-{tid}.img"] = common("CORE", core)
    for name, data_bytes in files.items():
        (directory / name).write_bytes(data_bytes)
    return layout


@pytest.fixture
def vdso(builds: Builds) -> VdsoTemplate:
    return VdsoTemplate.load(builds.vdso, vvar_pages=2, page_size=P)


def options(builds: Builds, tmp_path: Path, vdso: VdsoTemplate) -> RecodeOptions:
    return RecodeOptions(target="aarch64", root=builds.root(tmp_path / "root"), vdso=vdso)


def test_registers_found_past_parent_pages(builds: Builds, vdso: VdsoTemplate, tmp_path: Path) -> None:
    """PARENT pages occupy no bytes in pages-N.img: counting them (as criu-het does) reads the wrong bytes."""
    make_dump(tmp_path / "src", builds, parent_before=True)
    recode(tmp_path / "src", tmp_path / "out", options(builds, tmp_path, vdso))
    core = read_image(tmp_path / "out" / "core-1.img").entries[0].get(pb.core_entry)
    assert core.mtype == 3 and not core.HasField("thread_info")
    assert list(core.ti_aarch64.gpregs.regs) == list(X)
    assert core.ti_aarch64.tls == TLS and core.ti_aarch64.clear_tid_addr == 0x1234
    assert (core.ti_aarch64.gpregs.sp, core.ti_aarch64.gpregs.pc) == (0x5000, 0x401000)


def test_registers_not_dumped_here_are_refused(builds: Builds, vdso: VdsoTemplate, tmp_path: Path) -> None:
    make_dump(tmp_path / "src", builds, regs_present=False)
    with pytest.raises(RecodeError, match="task 1: regs_dst/tls_dst not in the dumped pages"):
        recode(tmp_path / "src", tmp_path / "out", options(builds, tmp_path, vdso))


def test_registers_a_lazy_dump_left_to_post_copy_come_from_the_notify(builds: Builds, vdso: VdsoTemplate,
                                                                     tmp_path: Path) -> None:
    """The flat freeze across ISAs: a lazy dump does not write .bss, where a C runtime keeps regs_dst; the recode
    takes what the notify read there at the migration point, for the task the dump names (its namespace pid)."""
    make_dump(tmp_path / "src", builds, regs_lazy=True)
    with pytest.raises(RecodeError, match=r"task 1: regs_dst/tls_dst not in the dumped pages .*left to post-copy.*"
                                          "and the notify read none for it"):
        recode(tmp_path / "src", tmp_path / "out", options(builds, tmp_path, vdso))
    captured = Regset(pid=1, regs=regset(sp=0x6000, pc=0x401100), tls=struct.pack("<Q", TLS + 8))
    others = Regset(pid=7, regs=regset(sp=0x9000), tls=bytes(8))
    recode(tmp_path / "src", tmp_path / "out", replace(options(builds, tmp_path, vdso), regsets=(others, captured)))
    core = read_image(tmp_path / "out" / "core-1.img").entries[0].get(pb.core_entry)
    assert (core.ti_aarch64.gpregs.sp, core.ti_aarch64.gpregs.pc) == (0x6000, 0x401100)
    assert list(core.ti_aarch64.gpregs.regs) == list(X) and core.ti_aarch64.tls == TLS + 8
    # Where the dump holds them, its bytes are the registers (the notify's copy is the same memory, read earlier).
    make_dump(tmp_path / "dumped", builds)
    recode(tmp_path / "dumped", tmp_path / "out2", replace(options(builds, tmp_path, vdso), regsets=(captured,)))
    core = read_image(tmp_path / "out2" / "core-1.img").entries[0].get(pb.core_entry)
    assert (core.ti_aarch64.gpregs.sp, core.ti_aarch64.tls) == (0x5000, TLS)


@pytest.mark.parametrize("nr_pages64", [False, True])
def test_entry_straddling_the_vdso_is_split(builds: Builds, vdso: VdsoTemplate, tmp_path: Path,
                                            nr_pages64: bool) -> None:
    layout = make_dump(tmp_path / "src", builds, straddle=True, nr_pages64=nr_pages64)
    recode(tmp_path / "src", tmp_path / "out", options(builds, tmp_path, vdso))
    pagemap = Pagemap.load(tmp_path / "out" / "pagemap-1.img", P)
    assert [r.vaddr for r in pagemap.runs] == sorted(r.vaddr for r in pagemap.runs)
    with (tmp_path / "out" / "pages-1.img").open("rb") as pages:
        assert pagemap.read(pages, layout.vdso + 2 * P, P) == b"A" * P, "the page after the vdso stays"
        assert pagemap.read(pages, layout.stack, P) == b"S" * P
        new_vdso = pagemap.find(layout.vvar + vdso.vvar_size)
        assert new_vdso is not None and new_vdso.nr_pages == 2
        assert pagemap.read(pages, new_vdso.vaddr, 2 * P) == vdso.vdso_pages
    pagemap.check_pages_size((tmp_path / "out" / "pages-1.img").stat().st_size)
    entries = read_image(tmp_path / "out" / "pagemap-1.img").entries[1:]
    split = next(e.get(pb.pagemap_entry) for e in entries if e.get(pb.pagemap_entry).vaddr == layout.vdso + 2 * P)
    if nr_pages64:
        assert (split.nr_pages, split.nr_pages64) == (0, 1), "CRIU 4.2's convention kept"
    else:
        assert split.nr_pages == 1 and not split.HasField("nr_pages64")


def test_vdso_moves_to_a_gap_when_its_place_is_taken(builds: Builds, tmp_path: Path) -> None:
    make_dump(tmp_path / "src", builds)
    # 12 pages of vvar + vdso do not fit in the 6 pages the x86 vvar and vdso left before the stack.
    big = VdsoTemplate.load(builds.vdso, vvar_pages=10, page_size=P)
    mm_image = read_image(tmp_path / "src" / "mm-1.img")
    mm_before = mm_image.entries[0].get(pb.mm_entry)
    mm_before.vmas.add(start=0x7F00_0000_6000, end=0x7F00_0001_0000, prot=3, flags=0x22, status=REGULAR, fd=-1)
    write_image(tmp_path / "src" / "mm-1.img", mm_image)
    kept = [(v.start, v.end) for v in mm_before.vmas if not v.status & (VDSO | VVAR | VSYSCALL)]
    recode(tmp_path / "src", tmp_path / "out", RecodeOptions(target="aarch64", root=builds.root(tmp_path / "r"),
                                                             vdso=big))
    mm = read_image(tmp_path / "out" / "mm-1.img").entries[0].get(pb.mm_entry)
    (vdso_vma,) = [v for v in mm.vmas if v.status & VDSO]
    (vvar_vma,) = [v for v in mm.vmas if v.status & VVAR]
    assert vvar_vma.end == vdso_vma.start and vvar_vma.end - vvar_vma.start == 10 * P
    for start, end in kept:
        assert vdso_vma.end <= start or end <= vvar_vma.start, "no overlap with any kept area"
    auxv = dict(zip(mm.mm_saved_auxv[::2], mm.mm_saved_auxv[1::2], strict=True))
    assert auxv[33] == vdso_vma.start


# An x86_64 kernel's vector of 22 entries (Linux 6.18): it fills x86_64 CRIU's 44 words, and CRIU before 4.1 takes
# 40 on aarch64.
X86_AUXV_KEYS = (33, 51, 16, 6, 17, 3, 4, 5, 7, 8, 9, 11, 12, 13, 14, 23, 25, 26, 31, 15, 27, 28)


def _with_auxv(directory: Path, keys: tuple[int, ...]) -> None:
    image = read_image(directory / "mm-1.img")
    mm = image.entries[0].get(pb.mm_entry)
    vdso = dict(zip(mm.mm_saved_auxv[::2], mm.mm_saved_auxv[1::2], strict=True))[33]
    del mm.mm_saved_auxv[:]
    mm.mm_saved_auxv.extend(word for key in keys for word in (key, vdso if key == 33 else 1000 + key))
    write_image(directory / "mm-1.img", image)


@pytest.mark.parametrize(("criu", "dropped"), [("4.1.1", ()), ("", ()), ("3.19", (51, 26))])
def test_the_auxiliary_vector_fits_the_target_s_criu(builds: Builds, vdso: VdsoTemplate, tmp_path: Path, criu: str,
                                                      dropped: tuple[int, ...]) -> None:
    """What a CRIU restores is its AT_VECTOR_SIZE words at most ("Image corrupted" beyond): the entries that only
    describe the source's CPU go first, and the report says which."""
    make_dump(tmp_path / "src", builds)
    _with_auxv(tmp_path / "src", X86_AUXV_KEYS)
    report = recode(tmp_path / "src", tmp_path / "out", replace(options(builds, tmp_path, vdso), target_criu=criu))
    mm = read_image(tmp_path / "out" / "mm-1.img").entries[0].get(pb.mm_entry)
    keys = list(mm.mm_saved_auxv[::2])
    assert keys == [k for k in X86_AUXV_KEYS if k not in dropped], "the rest in its order"
    assert dict(zip(keys, mm.mm_saved_auxv[1::2], strict=True))[6] == 1006, "values kept"
    said = [w for w in report.warnings if "auxiliary vector" in w]
    if dropped:
        assert len(mm.mm_saved_auxv) <= 40
        assert said and "51, 26" in said[0], report.warnings
    else:
        assert not said


def test_an_auxiliary_vector_that_cannot_fit_is_refused(builds: Builds, vdso: VdsoTemplate, tmp_path: Path) -> None:
    make_dump(tmp_path / "src", builds)
    _with_auxv(tmp_path / "src", (33, *range(3, 15), 17, 23, 25, 31, 32, 34, 35, 36, 37))  # 22: none expendable
    refused = r"task 1: its auxiliary vector has 22 entries, and the target's CRIU takes 20"
    with pytest.raises(RecodeError, match=refused):
        recode(tmp_path / "src", tmp_path / "out", replace(options(builds, tmp_path, vdso), target_criu="4.0"))


def test_auxv_words_per_target_criu() -> None:
    assert auxv_words("x86_64", "4.2.1") == auxv_words("x86_64", "") == 44
    assert auxv_words("aarch64", "4.1.1") == auxv_words("aarch64", "") == 50
    assert auxv_words("aarch64", "4.0") == 40


def test_multi_threaded_task_is_refused(builds: Builds, vdso: VdsoTemplate, tmp_path: Path) -> None:
    make_dump(tmp_path / "src", builds, threads=(1, 2))
    with pytest.raises(RecodeError, match="task 1 has 2 threads"):
        recode(tmp_path / "src", tmp_path / "out", options(builds, tmp_path, vdso))


def mount_images(directory: Path, *mounts: pb.mnt_entry) -> ImageSet:
    """A dump directory holding only an inventory and one mountpoints image."""
    directory.mkdir()
    (directory / "inventory.img").write_bytes(build(ImageHeader.inventory(), pb.inventory_entry(img_version=2)))
    (directory / "mountpoints-9.img").write_bytes(common("MNTS", *mounts))
    return ImageSet(directory)


def kept_mounts(images: ImageSet) -> list[int]:
    return [e.get(pb.mnt_entry).mnt_id for e in images.read("mountpoints-9.img").entries]


def test_android_profile_drops_nested_mounts_and_keeps_the_rest(tmp_path: Path) -> None:
    mounts = [pb.mnt_entry(mnt_id=1, parent_mnt_id=0, mountpoint="/"),
              pb.mnt_entry(mnt_id=2, parent_mnt_id=1, mountpoint="/proc"),
              pb.mnt_entry(mnt_id=3, parent_mnt_id=2, mountpoint="/proc/kcore"),
              pb.mnt_entry(mnt_id=4, parent_mnt_id=1, mountpoint="/data/custom"),
              pb.mnt_entry(mnt_id=5, parent_mnt_id=4, mountpoint="/data/custom/inner"),
              pb.mnt_entry(mnt_id=6, parent_mnt_id=1, mountpoint="/data/customer")]
    images = mount_images(tmp_path / "src", *mounts)
    AndroidProfile(("/proc/kcore", "/data/custom/"))(images)
    assert kept_mounts(images) == [1, 2, 6]


def test_range_copy_falls_back_to_a_buffer_where_the_kernel_cannot(tmp_path: Path) -> None:
    """copy_file_range refuses a pipe as destination: the bounded read/write path must take over."""
    src = tmp_path / "src"
    src.write_bytes(bytes(range(256)) * 64)
    read_end, write_end = os.pipe()
    try:
        with src.open("rb") as f:
            _copy_range(f.fileno(), write_end, 100, 1000)
        os.close(write_end)
        assert os.read(read_end, 4096) == (bytes(range(256)) * 64)[100:1100]
    finally:
        os.close(read_end)


def test_mounts_the_target_lacks_and_v1_cgroup_controllers_are_dropped(tmp_path: Path) -> None:
    mounts = [pb.mnt_entry(mnt_id=1, parent_mnt_id=0, mountpoint="/"),
              pb.mnt_entry(mnt_id=2, parent_mnt_id=1, mountpoint="/proc"),
              pb.mnt_entry(mnt_id=3, parent_mnt_id=2, mountpoint="/proc/acpi"),
              pb.mnt_entry(mnt_id=4, parent_mnt_id=2, mountpoint="/proc/acpitools"),
              pb.mnt_entry(mnt_id=5, parent_mnt_id=1, mountpoint="./sys/fs/cgroup"),
              pb.mnt_entry(mnt_id=6, parent_mnt_id=5, mountpoint="./sys/fs/cgroup/pids"),
              pb.mnt_entry(mnt_id=7, parent_mnt_id=5, mountpoint="/sys/fs/cgroup/cpu,cpuacct"),
              pb.mnt_entry(mnt_id=8, parent_mnt_id=1, mountpoint="/sys/fs/cgroupies")]
    images = mount_images(tmp_path / "src", *mounts)
    AbsentMountpoints(("/proc/acpi",))(images)
    CgroupV1Mounts()(images)
    assert kept_mounts(images) == [1, 2, 4, 5, 8], "exactly the absent path and the controllers below /sys/fs/cgroup"


def test_a_dump_by_criu_4_2_gets_page_counts_an_older_criu_reads(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    entries = [pb.pagemap_entry(vaddr=0x400000, nr_pages=0, nr_pages64=3, flags=PE_PRESENT),
               pb.pagemap_entry(vaddr=0x500000, nr_pages=0, nr_pages64=2, flags=PE_PARENT),
               pb.pagemap_entry(vaddr=0x600000, nr_pages=5, flags=PE_PRESENT)]  # an old entry: left as it is
    (src / "inventory.img").write_bytes(build(ImageHeader.inventory(), pb.inventory_entry(img_version=2)))
    (src / "pagemap-1.img").write_bytes(common("PAGEMAP", pb.pagemap_head(pages_id=1), *entries))
    images = ImageSet(src)
    PagemapCompat()(images)
    out = [e.get(pb.pagemap_entry) for e in images.read("pagemap-1.img").entries[1:]]
    assert [(e.nr_pages, e.nr_pages64) for e in out] == [(3, 3), (2, 2), (5, 0)]
    assert not out[2].HasField("nr_pages64")

    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "inventory.img").write_bytes((src / "inventory.img").read_bytes())
    (huge / "pagemap-1.img").write_bytes(common("PAGEMAP", pb.pagemap_head(pages_id=1),
                                                pb.pagemap_entry(vaddr=0, nr_pages=0, nr_pages64=1 << 33)))
    with pytest.raises(RecodeError, match="does not fit the older CRIU's 32-bit count"):
        PagemapCompat()(ImageSet(huge))
