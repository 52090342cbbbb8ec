"""The codec against a real CRIU 4 dump, with Debian's crit (CRIU 3.17) as the decoding oracle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from androcond.images import (
    PE_PRESENT,
    Pagemap,
    check_pagemaps,
    entry_nr_pages,
    image_files,
    open_image,
    pb,
    read_image,
    roundtrip_dir,
    show_image,
    write_image,
)

from .conftest import FILE_DATA, MEMORY_PAGES, PIPE_DATA, RealDump, find_crit

VMA_VDSO = 1 << 3
AT_SYSINFO_EHDR = 33
MTYPES = {"X86_64": 1, "AARCH64": 3}


def crit(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [*find_crit(), "decode", "--pretty", "-i", str(path)], capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def num(value: Any) -> int:
    """crit --pretty prints some numbers as hex strings."""
    return int(value, 0) if isinstance(value, str) else int(value)


def one(images: Path, pattern: str) -> Path:
    (path,) = images.glob(pattern)
    return path


def test_roundtrip_is_byte_identical(real_dump: RealDump, tmp_path: Path) -> None:
    result = roundtrip_dir(real_dump.images)
    assert "pages-1.img" in result and "core-%d.img" % real_dump.pid in result
    assert {name: diff for name, diff in result.items() if diff is not None} == {}
    for path in image_files(real_dump.images):
        write_image(tmp_path / path.name, read_image(path))
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_every_image_shows_as_json(real_dump: RealDump) -> None:
    for path in image_files(real_dump.images):
        shown = show_image(path)
        json.dumps(shown)
        assert not shown["magic"].startswith("UNKNOWN"), path.name


def test_pstree_matches_crit(real_dump: RealDump) -> None:
    ours = [e.get(pb.pstree_entry) for e in read_image(real_dump.images / "pstree.img").entries]
    theirs = crit(real_dump.images / "pstree.img")["entries"]
    assert [(e.pid, e.ppid, e.pgid, e.sid, list(e.threads)) for e in ours] == [
        (t["pid"], t["ppid"], t["pgid"], t["sid"], t["threads"]) for t in theirs
    ]
    assert ours[0].pid == real_dump.pid == ours[0].sid


def test_core_matches_crit(real_dump: RealDump) -> None:
    path = real_dump.images / f"core-{real_dump.pid}.img"
    (entry,) = read_image(path).entries
    ours = entry.get(pb.core_entry)
    (theirs,) = crit(path)["entries"]
    assert ours.mtype == MTYPES[theirs["mtype"]]
    assert ours.tc.comm == theirs["tc"]["comm"] == "sleeper"
    regs = theirs["thread_info"]["gpregs"]
    for name in ("ip", "sp", "fs_base", "ax"):
        assert getattr(ours.thread_info.gpregs, name) == num(regs[name]), name
    assert ours.thread_info.clear_tid_addr == num(theirs["thread_info"]["clear_tid_addr"])
    assert len(ours.thread_info.fpregs.xmm_space) == 64
    assert ours.thread_core.creds.uid == theirs["thread_core"]["creds"]["uid"]


def prot_bits(value: Any) -> int:
    """crit --pretty spells prot as "PROT_READ | PROT_EXEC" (or a number when no name fits)."""
    if not isinstance(value, str) or value.startswith("0x"):
        return num(value)
    names = {"PROT_READ": 1, "PROT_WRITE": 2, "PROT_EXEC": 4, "PROT_NONE": 0}
    return sum(names[part.strip()] for part in value.split("|"))


def test_mm_matches_crit(real_dump: RealDump) -> None:
    path = real_dump.images / f"mm-{real_dump.pid}.img"
    (entry,) = read_image(path).entries
    ours = entry.get(pb.mm_entry)
    (theirs,) = crit(path)["entries"]
    assert [(v.start, v.end, v.prot) for v in ours.vmas] == [
        (num(v["start"]), num(v["end"]), prot_bits(v["prot"])) for v in theirs["vmas"]
    ]
    assert [bool(v.status & VMA_VDSO) for v in ours.vmas] == ["VMA_AREA_VDSO" in v["status"] for v in theirs["vmas"]]
    assert list(ours.mm_saved_auxv) == [num(x) for x in theirs["mm_saved_auxv"]]
    assert ours.mm_start_code == num(theirs["mm_start_code"])


def test_pagemap_matches_crit(real_dump: RealDump) -> None:
    path = real_dump.images / f"pagemap-{real_dump.pid}.img"
    entries = read_image(path).entries
    theirs = crit(path)["entries"]
    assert entries[0].get(pb.pagemap_head).pages_id == theirs[0]["pages_id"]
    ours = [entries[i].get(pb.pagemap_entry) for i in range(1, len(entries))]
    # crit is CRIU 3.17's: it knows the old u32 count (field 2), in which CRIU >= 4.2 writes 0 and puts the
    # real count in field 5. Compare what both read, then check field 5 against the pages file itself.
    assert [(e.vaddr, e.nr_pages) for e in ours] == [(num(t["vaddr"]), t["nr_pages"]) for t in theirs[1:]]
    assert [bool(e.flags & PE_PRESENT) for e in ours] == ["PE_PRESENT" in t["flags"] for t in theirs[1:]]
    pages_file = real_dump.images / f"pages-{entries[0].get(pb.pagemap_head).pages_id}.img"
    present = sum(entry_nr_pages(e) for e in ours if e.flags & PE_PRESENT)
    assert present * 4096 == pages_file.stat().st_size  # every present page is in the file, once
    assert all(entry_nr_pages(e) > 0 for e in ours)


def test_files_match_crit(real_dump: RealDump) -> None:
    path = real_dump.images / "files.img"
    ours = [e.get(pb.file_entry) for e in read_image(path).entries]
    theirs = crit(path)["entries"]
    assert [(f.id, f.type) for f in ours] == [(t["id"], FILE_TYPES[t["type"]]) for t in theirs]
    names = {f.reg.name for f in ours if f.HasField("reg")}
    assert {str(real_dump.binary), str(real_dump.regular_file)} <= names
    exe = next(f for f in ours if f.reg.name == str(real_dump.binary))
    assert exe.reg.size == real_dump.binary.stat().st_size
    regular = next(f for f in ours if f.reg.name == str(real_dump.regular_file))
    assert regular.reg.pos == len(FILE_DATA)


FILE_TYPES = {"UND": 0, "REG": 1, "PIPE": 2, "FIFO": 3, "INETSK": 4, "UNIXSK": 5}


def test_pipe_data_is_the_payload(real_dump: RealDump) -> None:
    (entry,) = read_image(real_dump.images / "pipes-data.img").entries
    assert entry.get(pb.pipe_data_entry).bytes == len(PIPE_DATA)
    assert entry.extra == PIPE_DATA


def test_present_pages_fill_the_pages_file(real_dump: RealDump) -> None:
    pagemaps = check_pagemaps(real_dump.images)
    pagemap = pagemaps[f"pagemap-{real_dump.pid}.img"]
    size = (real_dump.images / pagemap.pages_name).stat().st_size
    assert pagemap.present_bytes == size
    assert sum(r.nr_pages for r in pagemap.runs if r.present) * pagemap.page_size == size
    assert size >= MEMORY_PAGES * pagemap.page_size


def test_vdso_and_heap_found_through_the_pagemap(real_dump: RealDump) -> None:
    (mm_entry,) = read_image(real_dump.images / f"mm-{real_dump.pid}.img").entries
    mm = mm_entry.get(pb.mm_entry)
    (vdso,) = [v for v in mm.vmas if v.status & VMA_VDSO]
    auxv = dict(zip(mm.mm_saved_auxv[::2], mm.mm_saved_auxv[1::2], strict=True))
    assert auxv[AT_SYSINFO_EHDR] == vdso.start
    pagemap = Pagemap.load(real_dump.images / f"pagemap-{real_dump.pid}.img")
    with (real_dump.images / pagemap.pages_name).open("rb") as pages:
        assert pagemap.read(pages, vdso.start, 4) == b"\x7fELF"
        # The program filled MEMORY_PAGES pages with page i = byte i+1; malloc served that from its own
        # mmap, the data starting after a 16-byte chunk header.
        block = next(
            v.start + 16
            for v in mm.vmas
            if v.end - v.start == (MEMORY_PAGES + 1) * pagemap.page_size and pagemap.file_offset(v.start) is not None
        )
        for page in (0, 1, MEMORY_PAGES - 1):
            assert pagemap.read(pages, block + page * 4096, 8) == bytes([page + 1]) * 8


def test_edit_keeps_everything_crit_sees(real_dump: RealDump, tmp_path: Path) -> None:
    """Change one field of core and files; crit must see exactly that change and nothing lost."""
    core_path = real_dump.images / f"core-{real_dump.pid}.img"
    image = read_image(core_path)
    core = image.entries[0].get(pb.core_entry)
    core.tc.comm = "renamed"
    write_image(tmp_path / core_path.name, image)
    before, after = crit(core_path), crit(tmp_path / core_path.name)
    before["entries"][0]["tc"]["comm"] = "renamed"
    assert after == before  # timers, rlimits, sigactions, ids... (undeclared here) all survived

    files = read_image(real_dump.images / "files.img")
    for entry in files.entries:
        msg = entry.get(pb.file_entry)
        if msg.reg.name == str(real_dump.binary):
            msg.reg.size += 1
            del msg.reg.build_id[:]
    write_image(tmp_path / "files.img", files)
    before, after = crit(real_dump.images / "files.img"), crit(tmp_path / "files.img")
    for entry in before["entries"]:
        if entry.get("reg", {}).get("name") == str(real_dump.binary):
            entry["reg"]["size"] += 1
            entry["reg"].pop("build_id", None)
    assert after == before


def test_pages_stream_through_open_image(real_dump: RealDump) -> None:
    with open_image(one(real_dump.images, "pages-*.img"), chunk_size=4096) as reader:
        chunks = list(reader.raw_chunks())
    assert all(len(c) == 4096 for c in chunks)
