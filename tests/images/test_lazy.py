"""The device's copy of a dump for post-copy (images/lazy.py): lazy entries keep only PE_LAZY and lose their
bytes; every other present entry keeps its bytes, in order."""

from __future__ import annotations

from pathlib import Path

from androcond.images.lazy import split_lazy
from androcond.images.pagemap import PE_LAZY, PE_PARENT, PE_PRESENT, Pagemap

from .builders import pagemap_image

PAGE = 4096


def page(n: int) -> bytes:
    return bytes([n]) * PAGE


def test_lazy_entries_lose_their_bytes_the_others_keep_them(tmp_path: Path) -> None:
    dump, out = tmp_path / "dump", tmp_path / "out"
    dump.mkdir()
    runs = [(0x1000, 1, PE_PRESENT),                 # e.g. a file's private page: eager
            (0x10000, 2, PE_PRESENT | PE_LAZY),      # anonymous: the page server's
            (0x20000, 1, PE_PARENT),                  # no bytes here at all
            (0x30000, 1, PE_PRESENT),
            (0x40000, 3, PE_PRESENT | PE_LAZY)]
    (dump / "pagemap-7.img").write_bytes(pagemap_image(1, *runs))
    (dump / "pages-1.img").write_bytes(page(1) + page(2) + page(3) + page(4) + page(5) + page(6) + page(7))
    split = split_lazy(dump, out)
    assert split.names == ["pagemap-7.img", "pages-1.img"]
    assert (split.eager_bytes, split.lazy_bytes) == (2 * PAGE, 5 * PAGE)
    assert (out / "pages-1.img").read_bytes() == page(1) + page(4)
    pagemap = Pagemap.load(out / "pagemap-7.img", PAGE)
    assert [(r.vaddr, r.nr_pages, r.flags) for r in pagemap.runs] == [
        (0x1000, 1, PE_PRESENT), (0x10000, 2, PE_LAZY), (0x20000, 1, PE_PARENT), (0x30000, 1, PE_PRESENT),
        (0x40000, 3, PE_LAZY)]
    pagemap.check_pages_size((out / "pages-1.img").stat().st_size)  # consistent as CRIU will read it
    with (out / "pages-1.img").open("rb") as f:
        assert pagemap.read(f, 0x30000, PAGE) == page(4)


def test_a_short_pages_file_is_an_error(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "pagemap-1.img").write_bytes(pagemap_image(1, (0x1000, 2, PE_PRESENT)))
    (dump / "pages-1.img").write_bytes(page(1))
    try:
        split_lazy(dump, tmp_path / "out")
    except OSError as exc:
        assert "short" in str(exc)
    else:
        raise AssertionError("a pages file shorter than its pagemap was split")
