"""x86_64 → aarch64: the stand-in notified with the real protocol, dumped by CRIU 4, recoded, and the result
read back by Debian's crit (CRIU 3.17) as the independent oracle."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from androcond.images import Pagemap, image_files, pb, read_image, roundtrip_dir
from androcond.popcorn.notify import notify_tasks
from androcond.recoder import RecodeError, RecodeOptions, VdsoTemplate, prepare, recode
from androcond.recoder.arch import PROT_EXEC, VMA_FILE_PRIVATE, open_flags_for

from ..images.test_real_dump import crit, num
from .conftest import (
    PAGE,
    STANDIN,
    STANDIN_PC,
    STANDIN_SP,
    STANDIN_TLS,
    STANDIN_V,
    STANDIN_X,
    Builds,
    CrossDump,
    Process,
    criu_dump,
)

VDSO, VVAR, VSYSCALL = "VMA_AREA_VDSO", "VMA_AREA_VVAR", "VMA_AREA_VSYSCALL"
AT_SYSINFO_EHDR = 33
REWRITTEN = {"core", "mm", "pagemap", "pages", "files"}


@pytest.fixture(scope="module")
def recoded(cross_dump: CrossDump, vdso: VdsoTemplate, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recoded") / "out"
    report = recode(cross_dump.images, out, RecodeOptions(target="aarch64", root=cross_dump.root, vdso=vdso))
    assert report.stages == ["Aarch64Recode"]
    return out


@pytest.fixture(scope="module")
def recoded_3_pages(cross_dump: CrossDump, vdso: VdsoTemplate, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """With a vdso one page larger than the x86 one (the stand-in plus a page of zeros), so that every page
    after it must move in pages-N.img."""
    larger = VdsoTemplate(vdso.vdso_pages + bytes(PAGE), vdso.vvar_size, PAGE)
    out = tmp_path_factory.mktemp("recoded-3") / "out"
    recode(cross_dump.images, out, RecodeOptions(target="aarch64", root=cross_dump.root, vdso=larger))
    return out


def decode(images: Path, name: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = crit(images / name)["entries"]
    assert len(entries) == 1
    return entries[0]


def special(vma: dict[str, Any]) -> bool:
    return any(flag in vma["status"] for flag in (VDSO, VVAR, VSYSCALL))


def test_crit_decodes_every_recoded_image(recoded: Path) -> None:
    names = [p.name for p in image_files(recoded) if p.suffix == ".img" and not p.name.startswith("pages-")]
    assert len(names) > 8
    for name in names:
        crit(recoded / name)  # raises on any decoding error


def test_core_is_aarch64_with_the_registers_the_program_wrote(cross_dump: CrossDump, recoded: Path) -> None:
    name = f"core-{cross_dump.pid}.img"
    before, after = decode(cross_dump.images, name), decode(recoded, name)
    assert before["mtype"] == "X86_64" and after["mtype"] == "AARCH64"
    assert "thread_info" not in after
    ti = after["ti_aarch64"]
    assert [num(r) for r in ti["gpregs"]["regs"]] == list(STANDIN_X)
    assert num(ti["gpregs"]["sp"]) == STANDIN_SP
    assert num(ti["gpregs"]["pc"]) == STANDIN_PC
    assert num(ti["gpregs"]["pstate"]) == 0x60000000
    assert num(ti["tls"]) == STANDIN_TLS
    vregs = [num(v) for v in ti["fpsimd"]["vregs"]]
    assert len(vregs) == 64
    halves = [int.from_bytes(half, "little") for reg in STANDIN_V for half in (reg[:8], reg[8:])]
    assert vregs == halves
    assert num(ti["clear_tid_addr"]) == num(before["thread_info"]["clear_tid_addr"])
    # Nothing else in the core changed: task state, signals, creds, timers...
    for core in (before, after):
        for key in ("mtype", "thread_info", "ti_aarch64"):
            core.pop(key, None)
    assert after == before


def test_vdso_replaced_and_vsyscall_gone(cross_dump: CrossDump, recoded: Path, vdso: VdsoTemplate) -> None:
    name = f"mm-{cross_dump.pid}.img"
    before, after = decode(cross_dump.images, name), decode(recoded, name)
    assert any(VSYSCALL in v["status"] for v in before["vmas"])
    assert not any(VSYSCALL in v["status"] for v in after["vmas"])
    (new_vdso,) = [v for v in after["vmas"] if VDSO in v["status"]]
    (new_vvar,) = [v for v in after["vmas"] if VVAR in v["status"]]
    start, end = num(new_vdso["start"]), num(new_vdso["end"])
    assert end - start == len(vdso.vdso_pages) == 2 * PAGE
    assert num(new_vvar["end"]) == start and num(new_vvar["end"]) - num(new_vvar["start"]) == vdso.vvar_size
    assert [num(v["start"]) for v in after["vmas"]] == sorted(num(v["start"]) for v in after["vmas"])
    auxv = [num(x) for x in after["mm_saved_auxv"]]
    assert dict(zip(auxv[::2], auxv[1::2], strict=True))[AT_SYSINFO_EHDR] == start
    # Every other area is exactly as before.
    assert [v for v in after["vmas"] if not special(v)] == [v for v in before["vmas"] if not special(v)]

    pagemap = Pagemap.load(recoded / f"pagemap-{cross_dump.pid}.img")
    with (recoded / pagemap.pages_name).open("rb") as pages:
        assert pagemap.read(pages, start, end - start) == vdso.vdso_pages
    old = [(num(v["start"]), num(v["end"])) for v in before["vmas"] if special(v)]
    for lo, hi in old:
        for addr in range(lo, hi, PAGE):
            if not start <= addr < end:
                assert pagemap.file_offset(addr) is None, hex(addr)


def _digest(pagemap: Pagemap, pages: Path, start: int, length: int) -> str:
    with pages.open("rb") as f:
        return hashlib.sha256(pagemap.read(f, start, length)).hexdigest()


@pytest.mark.parametrize("output", ["recoded", "recoded_3_pages"])
def test_every_other_page_unchanged_at_its_new_offset(cross_dump: CrossDump, output: str,
                                                      request: pytest.FixtureRequest) -> None:
    recoded: Path = request.getfixturevalue(output)
    name = f"pagemap-{cross_dump.pid}.img"
    src, dst = Pagemap.load(cross_dump.images / name), Pagemap.load(recoded / name)
    mm = decode(cross_dump.images, f"mm-{cross_dump.pid}.img")
    removed = [(num(v["start"]), num(v["end"])) for v in mm["vmas"] if special(v)] + exe_text(cross_dump)
    kept = [r for r in src.runs if r.present and not any(lo < r.vaddr + r.nr_pages * PAGE and r.vaddr < hi
                                                         for lo, hi in removed)]
    assert sum(r.nr_pages for r in kept) > 5
    for run in kept:
        length = run.nr_pages * PAGE
        assert _digest(dst, recoded / dst.pages_name, run.vaddr, length) == _digest(
            src, cross_dump.images / src.pages_name, run.vaddr, length), hex(run.vaddr)
    shifted = [run for run in kept if dst.file_offset(run.vaddr) != run.pages_offset]
    if output == "recoded_3_pages":
        assert shifted, "a larger vdso moves the pages after it"
    dst.check_pages_size((recoded / dst.pages_name).stat().st_size)


def exe_text(dump: CrossDump) -> list[tuple[int, int]]:
    """The executable's private executable file mappings in the dump (read with our codec)."""
    files = [e.get(pb.file_entry) for e in read_image(dump.images / "files.img").entries]
    exe_ids = {f.id for f in files if f.HasField("reg") and f.reg.name == str(dump.exe)}
    mm = read_image(dump.images / f"mm-{dump.pid}.img").entries[0].get(pb.mm_entry)
    return [(v.start, v.end) for v in mm.vmas
            if v.status & VMA_FILE_PRIVATE and v.prot & PROT_EXEC and v.shmid in exe_ids]


def test_the_executables_dumped_text_pages_are_dropped(cross_dump: CrossDump, recoded: Path) -> None:
    """CRIU's parasite made the first page of the executable's text copy-on-write, so it was dumped with x86_64
    code; the recode drops every dumped page of the exe's text, and the aarch64 file's own text is mapped."""
    text = exe_text(cross_dump)
    assert text, "the dump maps the executable's text"
    name = f"pagemap-{cross_dump.pid}.img"
    src, dst = Pagemap.load(cross_dump.images / name), Pagemap.load(recoded / name)
    assert any(src.has_pages(lo, hi) for lo, hi in text), "the parasite's page was dumped"
    for lo, hi in text:
        assert not any(r.vaddr < hi and lo < r.vaddr + r.nr_pages * PAGE for r in dst.runs), hex(lo)
    # Every other page is kept: test_every_other_page_unchanged_at_its_new_offset.


def _readelf_build_id(path: Path) -> list[int]:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Build ID: ([0-9a-f]+)", out)
    assert match, out
    raw = bytes.fromhex(match.group(1))
    return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]


def test_exe_entry_describes_the_aarch64_binary(cross_dump: CrossDump, recoded: Path, builds: Builds) -> None:
    before, after = crit(cross_dump.images / "files.img"), crit(recoded / "files.img")
    exe = str(cross_dump.exe)
    (entry,) = [e for e in after["entries"] if e.get("reg", {}).get("name") == exe]
    assert entry["reg"]["size"] == builds.aarch64.stat().st_size != builds.x86_64.stat().st_size
    assert entry["reg"]["build_id"] == _readelf_build_id(builds.aarch64)
    for files in (before, after):
        for e in files["entries"]:
            for part in ("reg", "pipe"):
                e.get(part, {}).pop("flags", None)  # moved to aarch64's bits (below)
            if e.get("reg", {}).get("name") == exe:
                e["reg"].pop("size")
                e["reg"].pop("build_id", None)
    assert after == before
    flags = [[(m.reg.flags, m.pipe.flags) for m in (e.get(pb.file_entry) for e in read_image(d / "files.img").entries)]
             for d in (cross_dump.images, recoded)]
    assert flags[1] == [(open_flags_for(r, "x86_64", "aarch64"), open_flags_for(p, "x86_64", "aarch64"))
                        for r, p in flags[0]]


def test_untouched_images_are_byte_identical_and_output_round_trips(cross_dump: CrossDump, recoded: Path) -> None:
    names = sorted(p.name for p in image_files(cross_dump.images))
    assert sorted(p.name for p in image_files(recoded)) == names
    changed = {n for n in names if (cross_dump.images / n).read_bytes() != (recoded / n).read_bytes()}
    assert {n.split("-")[0].removesuffix(".img") for n in changed} == REWRITTEN
    assert {name: d for name, d in roundtrip_dir(recoded).items() if d is not None} == {}


def test_x86_register_set_is_refused(builds: Builds, vdso: VdsoTemplate, tmp_path: Path,
                                     processes: list[Process]) -> None:
    """A task notified for the wrong target carries the x86_64 magic: the recode must say so, not guess."""
    root = builds.root(tmp_path / "root")
    proc = Process([str(root / "bin" / STANDIN), str(tmp_path / "ready")], ready=tmp_path / "ready")
    processes.append(proc)
    notify_tasks([proc.pid], "x86_64", timeout=10)
    criu_dump(proc.pid, tmp_path / "images")
    with pytest.raises(RecodeError, match=r"magic is 0xa8664deadbeaf.*x86_64 register set"):
        recode(tmp_path / "images", tmp_path / "out", RecodeOptions(target="aarch64", vdso=vdso))


def test_missing_aarch64_variant_is_refused(cross_dump: CrossDump, vdso: VdsoTemplate, tmp_path: Path) -> None:
    root = tmp_path / "root"
    exe_rel = cross_dump.exe.relative_to("/")
    (root / exe_rel).parent.mkdir(parents=True)
    shutil.copy2(cross_dump.exe, root / exe_rel)
    shutil.copy2(cross_dump.exe, root / exe_rel.with_name(f"{STANDIN}_x86-64"))
    with pytest.raises(RecodeError, match=f"{STANDIN}_aarch64: cannot read"):
        recode(cross_dump.images, tmp_path / "out", RecodeOptions(target="aarch64", root=root, vdso=vdso))


def test_streamed_recode_is_the_written_one(cross_dump: CrossDump, vdso: VdsoTemplate, recoded: Path) -> None:
    prepared = prepare(cross_dump.images, RecodeOptions(target="aarch64", root=cross_dump.root, vdso=vdso))
    digests: dict[str, hashlib._Hash] = {}
    for output, chunk in prepared.chunks(3 * PAGE):
        assert len(chunk) <= 3 * PAGE
        digests.setdefault(output.name, hashlib.sha256()).update(chunk)
    written = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in image_files(recoded)}
    assert {name: d.hexdigest() for name, d in digests.items()} == {
        name: digest for name, digest in written.items() if (recoded / name).stat().st_size  # empty: no chunk
    }
    assert {f.name: f.size for f in prepared.files} == {p.name: p.stat().st_size for p in image_files(recoded)}
