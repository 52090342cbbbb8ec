"""What travels besides the CRIU images: a container's writable layer (overlay2 upper dir) and checkpoint
directory, as ordered lists of files for the transport (read as protocol/tree.py reads a tree: whiteouts and
opaque directories kept, parents first)."""

from __future__ import annotations

import stat
from pathlib import Path, PurePosixPath

from ..criu.leftovers import is_own
from ..errors import AndrocondError
from ..protocol import protocol_pb2 as pb
from ..protocol.tree import Entry, TreeError, entries
from .payload import OutgoingFile


class LayerError(AndrocondError):
    pass


def _outgoing(item: Entry, destination: int, volume: str) -> OutgoingFile:
    return OutgoingFile(destination, item.name, item.kind, source=item.path if item.kind == pb.REGULAR else None,
                        size=item.size, mode=item.mode, uid=item.uid, gid=item.gid, mtime_ns=item.mtime_ns,
                        link_target=item.link_target, volume=volume, opaque=item.opaque)


def tree_files(root: Path, destination: int, volume: str = "") -> list[OutgoingFile]:
    """Every entry beneath root, parents first, not following symlinks (protocol/tree.py)."""
    try:
        return [_outgoing(item, destination, volume) for item in entries(root)]
    except TreeError as exc:
        raise LayerError(str(exc)) from exc


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
    # The source's marks of its own checkpoint (for its rollback): the device places its own.
    files = [f for f in tree_files(directory, pb.CHECKPOINT) if not is_own(f.path)]
    odd = [f.path for f in files if f.kind != pb.REGULAR]
    if odd:
        raise LayerError(f"checkpoint {directory} holds non-regular files: {', '.join(odd[:5])}")
    return files
