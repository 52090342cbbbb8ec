"""Names from the wire are never trusted as paths.

A name must be relative, '/'-separated, without '.', '..', empty or NUL components. It is placed beneath a
root by walking one component at a time without following symbolic links, so a link planted inside the
root (or a container's writable layer) cannot lead a write outside it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from .errors import UnsafePath


def check_name(name: str) -> PurePosixPath:
    if not name or "\0" in name:
        raise UnsafePath(f"refused path {name!r}: empty or contains NUL")
    if name.startswith("/"):
        raise UnsafePath(f"refused path {name!r}: absolute")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"refused path {name!r}: '.', '..' or empty component")
    return PurePosixPath(*parts)


def place_beneath(root: Path, name: str) -> Path:
    """Return the path for `name` under `root`, creating parent directories; refuse symlinked parents."""
    rel = check_name(name)
    current = root
    for part in rel.parts[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"refused path {name!r}: {part!r} is a symbolic link")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"refused path {name!r}: {part!r} is not a directory")
    target = current / rel.parts[-1]
    if target.is_symlink():
        raise UnsafePath(f"refused path {name!r}: it is a symbolic link")
    return target


def open_new_file(path: Path, mode: int) -> int:
    """Open for writing without following a final symlink; replaces a regular file already there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, mode & 0o7777 or 0o644)
