"""The migrations' workspace: at start the daemon removes what finished migrations left there (one killed after
"done" never ran its own cleanup) and keeps what an unfinished one may still need."""

from __future__ import annotations

from pathlib import Path

from androcond.migration.stream import Workspace


async def test_the_sweep_removes_all_but_the_unfinished(tmp_path: Path) -> None:
    left, unfinished = Workspace.of(tmp_path, "done-1"), Workspace.of(tmp_path, "open-2")
    for directory in (left.recoded, left.pulled, unfinished.recoded, unfinished.lazy):
        directory.mkdir(parents=True)
        (directory / "pages-1.img").write_bytes(b"\0" * 4096)
    (tmp_path / "journal.sqlite3").write_bytes(b"")
    assert await Workspace.sweep(tmp_path, keep={"open-2"}) == ["done-1"]
    assert not left.recoded.exists() and not left.pulled.exists()
    assert (unfinished.recoded / "pages-1.img").is_file() and (unfinished.lazy / "pages-1.img").is_file()
    assert (tmp_path / "journal.sqlite3").is_file()
    assert await Workspace.sweep(tmp_path / "fresh", keep=set()) == []
