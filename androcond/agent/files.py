"""A received file's work on the device's disk, run in worker threads: made in place beneath its root (a
file, directory, link or whiteout), written and hashed as it arrives, closed with its metadata once verified,
removed again when the migration is discarded."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..protocol import protocol_pb2 as pb
from .errors import NoSpace, UnsafePath
from .paths import open_new_file, place_beneath

# Space kept free on the device beyond what a migration announces.
FREE_SPACE_MARGIN = 64 * 1024 * 1024


@dataclass
class OpenFile:
    start: pb.FileStart
    path: Path | None = None
    fd: int | None = None
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    received: int = 0
    image_queue: asyncio.Queue[bytes | None] | None = None
    image_load: asyncio.Task[None] | None = None


def statvfs_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def free_bytes(path: Path) -> int:
    return await asyncio.to_thread(statvfs_free, path)


def place(root: Path, start: pb.FileStart, current: OpenFile, written: list[Path], data_root: Path) -> None:
    """Make the file, directory, link or whiteout `start` names beneath `root`, recording what was made in
    `current` and `written` (the caller waits for this to finish even if cancelled, so a discard sees it)."""
    if start.kind == pb.REGULAR:
        free = statvfs_free(data_root)
        if start.size + FREE_SPACE_MARGIN > free:
            raise NoSpace(f"not enough space on the device for {start.path!r} ({start.size} bytes, {free} free)")
    path = place_beneath(root, start.path)
    current.path = path
    if start.kind == pb.REGULAR:
        current.fd = open_new_file(path, start.mode)
        written.append(path)
    elif start.kind == pb.DIRECTORY:
        path.mkdir(mode=start.mode & 0o7777 or 0o755, exist_ok=True)
        if start.opaque:
            os.setxattr(path, "trusted.overlay.opaque", b"y")
    elif start.kind == pb.SYMLINK:
        if start.destination == pb.CHECKPOINT:
            raise UnsafePath(f"refused symbolic link {start.path!r} in a checkpoint")
        path.unlink(missing_ok=True)
        os.symlink(start.link_target, path)
        written.append(path)
    elif start.kind == pb.WHITEOUT:
        if start.destination != pb.ROOTFS:
            raise UnsafePath(f"refused whiteout {start.path!r} outside the writable layer")
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        written.append(path)


def write_and_hash(fd: int, chunk: bytes, hasher: hashlib._Hash) -> None:
    view = memoryview(chunk)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    hasher.update(chunk)


def finish_file(fd: int | None, path: Path | None, start: pb.FileStart) -> None:
    """Close the file (if one is open) and, for a verified one (`path` given), set its owner, mode, mtime."""
    if fd is not None:
        os.close(fd)
    if path is not None:
        apply_metadata(path, start)


def apply_metadata(path: Path, start: pb.FileStart) -> None:
    os.chown(path, start.uid, start.gid, follow_symlinks=False)
    if start.kind != pb.SYMLINK:
        os.chmod(path, start.mode & 0o7777 or (0o755 if start.kind == pb.DIRECTORY else 0o644))
    if start.mtime_ns:
        os.utime(path, ns=(start.mtime_ns, start.mtime_ns), follow_symlinks=False)


def remove_files(fd: int | None, paths: list[Path]) -> list[tuple[Path, str]]:
    """Close the open file and unlink `paths`; returns what could not be removed (and why)."""
    failures: list[tuple[Path, str]] = []
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            failures.append((path, str(exc)))
    return failures
