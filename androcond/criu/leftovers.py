"""What `docker start --checkpoint` leaves behind, and how we find it again.

Docker 20.10 tars a checkpoint directory into containerd's content store, and containerd extracts it into
its TMPDIR as `ctrd-checkpoint*` before `runc restore` — and never removes that copy: every restore through
the engine leaves the container's whole memory on disk. Every checkpoint androcond places carries a nonce
file; after the restore (on the device, or a rollback at the source) the extraction holding that nonce is
removed. The nonce also makes each checkpoint's tar unique, so containerd's "content … already exists"
(moby#42900) cannot happen. Blocking (file system walks): run in a thread.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

NONCE_FILE = "androcond-nonce"
# Marks a lazy dump's checkpoint (the flat freeze), or an emulated container's readout (agent/readout.py): it
# holds no CRIU dump, so nothing can start from it, and the container's pause is ours to undo. Placed before the
# pause (mark_flat), so that whoever settles the move after a crash at any point of the freeze finds it.
FLAT_FILE = "androcond-flat"
# A lazy dump's work directory (CRIU's dump.log, runc's output), inside its checkpoint directory: it goes with
# the checkpoint whoever ends the move (the rollback removes the checkpoint, the end removes the container), so a
# process killed while the dump holds the tasks leaves nothing of it elsewhere.
LAZY_DUMP_WORK = ".androcond-lazy-dump"
# containerd's TMPDIR when the engine sets none (Debian's docker.io, the bed's engines).
CONTAINERD_TMP: tuple[Path, ...] = (Path("/tmp"),)


def is_own(path: str) -> bool:
    """Whether `path` (relative to a checkpoint directory) is androcond's own, never sent with the images: the
    marks and a lazy dump's work directory (the device places its own)."""
    return path in (NONCE_FILE, FLAT_FILE) or path == LAZY_DUMP_WORK or path.startswith(f"{LAZY_DUMP_WORK}/")


def place_nonce(checkpoint_dir: Path, owner: str = "") -> str:
    """Mark the checkpoint with a new nonce. A restore's `owner` (its migration id) prefixes it, so that
    whoever settles that migration after a crash, when the nonce died with the process, still finds
    containerd's extraction (remove_extractions_of)."""
    nonce = f"{owner}.{uuid.uuid4().hex}" if owner else uuid.uuid4().hex
    (checkpoint_dir / NONCE_FILE).write_text(nonce)
    return nonce


def mark_flat(checkpoint_dir: Path) -> None:
    """Make the flat freeze's checkpoint directory, marked, before the container is paused."""
    checkpoint_dir.mkdir(parents=True, exist_ok=False)
    (checkpoint_dir / FLAT_FILE).write_text("")


def extractions(tmp_dirs: tuple[Path, ...] = CONTAINERD_TMP) -> set[Path]:
    """containerd's checkpoint extractions now in its TMPDIR, whoever's they are."""
    return {p for tmp in tmp_dirs for p in tmp.glob("ctrd-checkpoint*")}


def remove_extractions(nonce: str, tmp_dirs: tuple[Path, ...] = CONTAINERD_TMP) -> list[Path]:
    """Remove containerd's extractions of the checkpoint that carries `nonce`; return what was removed."""
    return _remove_where(lambda found: found == nonce, tmp_dirs)


def remove_extractions_of(owner: str, tmp_dirs: tuple[Path, ...] = CONTAINERD_TMP) -> list[Path]:
    """Remove containerd's extractions of every checkpoint placed for `owner` (a migration id)."""
    if not owner:
        return []
    return _remove_where(lambda found: found.startswith(f"{owner}."), tmp_dirs)


def _remove_where(matches: Callable[[str], bool], tmp_dirs: tuple[Path, ...]) -> list[Path]:
    removed: list[Path] = []
    for extracted in extractions(tmp_dirs):
        try:
            if not matches((extracted / NONCE_FILE).read_text()):
                continue
        except OSError:
            continue
        shutil.rmtree(extracted, ignore_errors=True)
        removed.append(extracted)
    return removed
