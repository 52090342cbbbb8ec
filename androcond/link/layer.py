"""What travels besides the CRIU images: a container's writable layer (overlay2 upper dir) and checkpoint
directory, as ordered lists of files for the transport.

Overlay semantics are kept: a deleted image file is a whiteout (char device 0:0), an opaque directory
carries `trusted.overlay.opaque=y`. Directories come before their contents.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from ..criu.leftovers import NONCE_FILE
from ..errors import AndrocondError
from ..protocol import protocol_pb2 as pb
from .payload import OutgoingFile


class LayerError(AndrocondError):
    pass


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _entry(root: Path, path: Path, destination: int, volume: str) -> OutgoingFile:
    name = path.relative_to(root).as_posix()
    st = path.lstat()
    common = {"mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
              "volume": volume}
    if stat.S_ISDIR(st.st_mode):
        return OutgoingFile(destination, name, pb.DIRECTORY, opaque=_is_opaque(path), **common)  # type: ignore[arg-type]
    if stat.S_ISLNK(st.st_mode):
        return OutgoingFile(destination, name, pb.SYMLINK, link_target=os.readlink(path), **common)  # type: ignore[arg-type]
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return OutgoingFile(destination, name, pb.WHITEOUT, **common)  # type: ignore[arg-type]
    if stat.S_ISREG(st.st_mode):
        return OutgoingFile(destination, name, pb.REGULAR, source=path, size=st.st_size, **common)  # type: ignore[arg-type]
    raise LayerError(f"{path}: cannot move a {stat.filemode(st.st_mode)[0]!r}-type file (device, socket or fifo)")


def tree_files(root: Path, destination: int, volume: str = "") -> list[OutgoingFile]:
    """Every entry beneath root, parents first (os.walk top-down), not following symlinks."""
    files: list[OutgoingFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for name in dirnames:
            files.append(_entry(root, here / name, destination, volume))
        for name in sorted(filenames):
            files.append(_entry(root, here / name, destination, volume))
    return files


def executables_for_target(root: Path, executables: list[str], suffix: str) -> list[OutgoingFile]:
    """Each executable's variant for the target (`<bin><suffix>`, e.g. `_aarch64`), sent to the writable layer at
    the executable's own path: CRIU maps a task's binary by path, so on the device `<bin>` must be that variant.
    `root` is the container's merged root (overlayfs has applied whiteouts and opaque directories); the content
    comes from the variant, the mode and owner from `<bin>` itself."""
    files = []
    for name in executables:
        path = PurePosixPath(name)
        if not path.is_absolute() or ".." in path.parts:
            raise LayerError(f"executable path {name!r} is not a plain absolute path")
        relative = path.relative_to("/").as_posix()
        binary = root / relative
        variant = binary.with_name(binary.name + suffix)
        st, vst = binary.lstat(), variant.lstat()
        if not (stat.S_ISREG(st.st_mode) and stat.S_ISREG(vst.st_mode)):
            raise LayerError(f"{name} and {variant.name} must be regular files (not links) in the container")
        files.append(OutgoingFile(pb.ROOTFS, relative, pb.REGULAR, source=variant, size=vst.st_size,
                                  mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid, mtime_ns=vst.st_mtime_ns))
    return files


def replace_files(files: list[OutgoingFile], replacements: list[OutgoingFile]) -> list[OutgoingFile]:
    """`files` with `replacements` in place of the entries of the same destination and path (appended: their
    parent directories come first, or are made by the device)."""
    replaced = {(f.destination, f.path) for f in replacements}
    return [f for f in files if (f.destination, f.path) not in replaced] + replacements


def checkpoint_files(directory: Path) -> list[OutgoingFile]:
    # The source's nonce marks its own checkpoint (for its rollback's cleanup); the device places its own.
    files = [f for f in tree_files(directory, pb.CHECKPOINT) if f.path != NONCE_FILE]
    odd = [f.path for f in files if f.kind != pb.REGULAR]
    if odd:
        raise LayerError(f"checkpoint {directory} holds non-regular files: {', '.join(odd[:5])}")
    return files
