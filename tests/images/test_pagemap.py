"""Pagemap walk: offsets count PRESENT pages only, field 5 beats field 2, legacy in_parent."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from androcond.images import (
    PE_LAZY,
    PE_PARENT,
    PE_PRESENT,
    Entry,
    ImageFormatError,
    ImageReader,
    Pagemap,
    check_pagemaps,
    entry_flags,
    entry_nr_pages,
    pb,
)

from .builders import common, pagemap_image

PAGE = 4096


def test_nr_pages_field_5_wins_over_field_2() -> None:
    assert entry_nr_pages(pb.pagemap_entry(nr_pages=3)) == 3
    assert entry_nr_pages(pb.pagemap_entry(nr_pages=0, nr_pages64=1 << 33)) == 1 << 33
    assert entry_nr_pages(pb.pagemap_entry(nr_pages=2, nr_pages64=0)) == 0


def test_flags_and_legacy_in_parent() -> None:
    assert entry_flags(pb.pagemap_entry(flags=PE_LAZY | PE_PRESENT)) == PE_LAZY | PE_PRESENT
    assert entry_flags(pb.pagemap_entry(flags=0, in_parent=True)) == 0
    assert entry_flags(pb.pagemap_entry(in_parent=True)) == PE_PARENT
    assert entry_flags(pb.pagemap_entry()) == PE_PRESENT
    assert entry_flags(pb.pagemap_entry(in_parent=False)) == PE_PRESENT


def _load(data: bytes, page_size: int = PAGE) -> Pagemap:
    reader = ImageReader(io.BytesIO(data), "pagemap-1.img")
    return Pagemap.from_entries(reader.entries(), reader.name, page_size)


def test_offsets_count_only_present_entries() -> None:
    pagemap = _load(
        pagemap_image(
            4,
            (0x10000, 2, PE_PRESENT),
            (0x20000, 3, PE_PARENT),
            (0x30000, 1, PE_LAZY | PE_PRESENT),
            (0x40000, 1, PE_LAZY),
        )
    )
    assert pagemap.pages_name == "pages-4.img"
    assert [run.pages_offset for run in pagemap.runs] == [0, None, 2 * PAGE, None]
    assert pagemap.present_bytes == 3 * PAGE
    assert pagemap.file_offset(0x10000 + PAGE + 5) == PAGE + 5
    assert pagemap.file_offset(0x20000) is None  # in the parent dump
    assert pagemap.file_offset(0x30010) == 2 * PAGE + 0x10
    assert pagemap.file_offset(0x50000) is None
    pagemap.check_pages_size(3 * PAGE)


def test_legacy_entries_and_nr_pages64() -> None:
    data = common(
        "PAGEMAP",
        pb.pagemap_head(pages_id=1),
        pb.pagemap_entry(vaddr=0x1000, nr_pages=1, in_parent=True),
        pb.pagemap_entry(vaddr=0x8000, nr_pages=0, nr_pages64=2),
        pb.pagemap_entry(vaddr=0xA000, nr_pages=1),
    )
    pagemap = _load(data)
    assert [(r.nr_pages, r.pages_offset) for r in pagemap.runs] == [(1, None), (2, 0), (1, 2 * PAGE)]


def test_read_spans_adjacent_runs_and_refuses_absent_pages() -> None:
    pagemap = _load(pagemap_image(1, (0x1000, 1, PE_PRESENT), (0x2000, 1, PE_PRESENT), (0x3000, 1, PE_PARENT)))
    pages = io.BytesIO(b"a" * PAGE + b"b" * PAGE)
    assert pagemap.read(pages, 0x1FFE, 4) == b"aabb"
    with pytest.raises(ImageFormatError, match="no PRESENT page"):
        pagemap.read(pages, 0x2FFE, 4)


def test_read_names_memory_a_lazy_dump_left_to_post_copy() -> None:
    """A lazy dump (the flat freeze) writes no anonymous page: what a recode would read there is named as such."""
    pagemap = _load(pagemap_image(1, (0x1000, 1, PE_PRESENT), (0x2000, 1, PE_LAZY)))
    pages = io.BytesIO(b"a" * PAGE)
    assert pagemap.read(pages, 0x1000, 2) == b"aa"
    with pytest.raises(ImageFormatError, match="0x2008 is in memory left to post-copy"):
        pagemap.read(pages, 0x2008, 8)


def test_pagemap_claiming_more_than_pages_file(tmp_path: Path) -> None:
    (tmp_path / "pagemap-7.img").write_bytes(pagemap_image(1, (0x1000, 1, PE_PRESENT), (0x4000, 2, PE_PRESENT)))
    (tmp_path / "pages-1.img").write_bytes(b"x" * 2 * PAGE)
    with pytest.raises(ImageFormatError) as info:
        check_pagemaps(tmp_path, PAGE)
    assert info.value.file == "pagemap-7.img"
    assert info.value.offset == 25  # the second entry: 8 magic bytes + head (4+2) + first entry (4+7)
    assert "beyond" in info.value.reason
    (tmp_path / "pages-1.img").write_bytes(b"x" * 4 * PAGE)
    with pytest.raises(ImageFormatError, match="not covered"):
        check_pagemaps(tmp_path, PAGE)
    (tmp_path / "pages-1.img").write_bytes(b"x" * 3 * PAGE)
    assert check_pagemaps(tmp_path, PAGE)["pagemap-7.img"].present_bytes == 3 * PAGE


def test_pagemap_without_head() -> None:
    with pytest.raises(ImageFormatError, match="without pagemap_head"):
        Pagemap.from_entries([], "pagemap-1.img", PAGE)
    head_only = _load(common("PAGEMAP", Entry(pb.pagemap_head(pages_id=2).SerializeToString())))
    assert head_only.runs == []
