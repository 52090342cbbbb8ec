"""A directory tree as the file protocol carries it, read the same way on both ends: the daemon sends the
host's writable layer and volumes, the agent sends the device's on the way back.

Overlay semantics are kept: a deleted image file is a whiteout (char device 0:0), an opaque directory carries
`trusted.overlay.opaque=y`. Directories come before their contents. Blocking (it stats every entry).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import AndrocondError
from . import protocol_pb2 as pb


class TreeError(AndrocondError):
    """An entry the protocol cannot carry (a device node, socket or fifo)."""


@dataclass(frozen=True)
class Entry:
    path: Path  # where it is on this machine
    name: str  # relative to the tree's root, '/'-separated
    kind: int  # pb.FileKind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0  # regular files
    link_target: str = ""
    opaque: bool = False

    def start(self, destination: int, stream_id: int = 0, volume: str = "") -> pb.FileStart:
        return pb.FileStart(stream_id=stream_id, destination=destination, path=self.name,  # type: ignore[arg-type]
                            volume=volume, kind=self.kind, size=self.size, mode=self.mode,  # type: ignore[arg-type]
                            link_target=self.link_target, uid=self.uid, gid=self.gid, mtime_ns=self.mtime_ns,
                            opaque=self.opaque)


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def entry(root: Path, path: Path) -> Entry:
    name = path.relative_to(root).as_posix()
    st = path.lstat()
    common = (path, name)
    meta = (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns)
    if stat.S_ISDIR(st.st_mode):
        return Entry(*common, pb.DIRECTORY, *meta, opaque=_is_opaque(path))
    if stat.S_ISLNK(st.st_mode):
        return Entry(*common, pb.SYMLINK, *meta, link_target=os.readlink(path))
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return Entry(*common, pb.WHITEOUT, *meta)
    if stat.S_ISREG(st.st_mode):
        return Entry(*common, pb.REGULAR, *meta, size=st.st_size)
    raise TreeError(f"{path}: cannot move a {stat.filemode(st.st_mode)[0]!r}-type file (device, socket or fifo)")


def entries(root: Path) -> list[Entry]:
    """Every entry beneath root, parents first (os.walk top-down), not following symlinks."""
    found: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for name in dirnames:
            found.append(entry(root, here / name))
        for name in sorted(filenames):
            found.append(entry(root, here / name))
    return found


def tree_size(root: Path) -> int:
    """Bytes of the regular files beneath root (entries that vanish meanwhile are skipped)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
