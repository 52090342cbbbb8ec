"""Finding containerd's extractions of our checkpoints again (criu/leftovers.py), against directories laid out as
containerd leaves them in its TMPDIR: by the nonce a live restore knows, and by the migration that placed the
checkpoint when its nonce died with the process (a crash mid-restore, settled later)."""

from __future__ import annotations

import shutil
from pathlib import Path

from androcond.criu.leftovers import (
    FLAT_FILE,
    LAZY_DUMP_WORK,
    NONCE_FILE,
    is_own,
    place_nonce,
    remove_extractions,
    remove_extractions_of,
)
from androcond.link.layer import checkpoint_files


def _extracted(tmp: Path, checkpoint: Path, suffix: str) -> Path:
    """What containerd does with a checkpoint at restore: a copy in `ctrd-checkpoint*` of its TMPDIR."""
    copy = tmp / f"ctrd-checkpoint{suffix}"
    shutil.copytree(checkpoint, copy)
    return copy


def _checkpoint(root: Path, name: str, owner: str = "") -> tuple[Path, str]:
    directory = root / name
    directory.mkdir()
    (directory / "inventory.img").write_bytes(b"\0" * 8)
    return directory, place_nonce(directory, owner=owner)


def test_an_owner_s_extractions_are_found_without_their_nonce(tmp_path: Path) -> None:
    tmp, checkpoints = tmp_path / "tmp", tmp_path / "checkpoints"
    tmp.mkdir()
    checkpoints.mkdir()
    mine, _ = _checkpoint(checkpoints, "mine", owner="m1")
    again, _ = _checkpoint(checkpoints, "again", owner="m1")  # a second restore of the same migration
    longer, _ = _checkpoint(checkpoints, "longer", owner="m10")  # an id that extends ours is not ours
    plain, _ = _checkpoint(checkpoints, "plain")  # a source's rollback: no owner
    found = {_extracted(tmp, mine, "1"), _extracted(tmp, again, "2")}
    others = {_extracted(tmp, longer, "3"), _extracted(tmp, plain, "4")}
    unreadable = tmp / "ctrd-checkpoint5"  # containerd still extracting: no nonce yet
    unreadable.mkdir()

    assert set(remove_extractions_of("m1", (tmp,))) == found
    assert {p for p in tmp.iterdir()} == others | {unreadable}
    assert remove_extractions_of("", (tmp,)) == [], "no owner names no one's extractions"
    assert {p for p in tmp.iterdir()} == others | {unreadable}


def test_a_nonce_names_one_extraction(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    first, nonce = _checkpoint(tmp_path, "first", owner="m1")
    second, _ = _checkpoint(tmp_path, "second", owner="m1")
    assert nonce.startswith("m1.") and nonce != (second / NONCE_FILE).read_text()
    ours, theirs = _extracted(tmp, first, "a"), _extracted(tmp, second, "b")
    assert remove_extractions(nonce, (tmp,)) == [ours]
    assert list(tmp.iterdir()) == [theirs]


def test_a_lazy_dump_s_work_and_the_marks_stay_out_of_what_is_sent(tmp_path: Path) -> None:
    """The flat freeze's work directory lives in its checkpoint directory (so it goes with it, whoever ends the
    move), and like the marks it is never sent: the images are."""
    checkpoint, _nonce = _checkpoint(tmp_path, "cp")
    (checkpoint / FLAT_FILE).write_text("")
    work = checkpoint / LAZY_DUMP_WORK
    work.mkdir()
    (work / "dump.log").write_text("growing while the pages are served")
    (checkpoint / "pagemap-1.img").write_bytes(b"\0" * 8)
    assert sorted(f.path for f in checkpoint_files(checkpoint)) == ["inventory.img", "pagemap-1.img"]
    assert is_own(NONCE_FILE) and is_own(FLAT_FILE) and is_own(LAZY_DUMP_WORK)
    assert is_own(f"{LAZY_DUMP_WORK}/dump.log")
    assert not is_own(f"{LAZY_DUMP_WORK}x/dump.log") and not is_own("dump.log")
