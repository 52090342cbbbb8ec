"""Android fix-ups: what an Android kernel refuses at restore that a Docker host's dump carries.

- seccomp: Docker's default filter dumps as `seccomp_mode: filter` on every thread; Android's kernels and
  SELinux setup are not where that filter can be re-installed, so the mode (and filter reference) go.
- LSM: the AppArmor profile name (`docker-default`) means nothing under SELinux; it is cleared.
- mountpoints Android kernels lack (systemd and memory cgroup hierarchies, /proc/kcore, /proc/acpi) are
  dropped with every mount below them.

Only the fields and entries named change: every other entry keeps its original bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import Message

from ..images import pb
from .imageset import ImageSet

DEFAULT_DROPPED_MOUNTS: Final = (
    "/sys/fs/cgroup/systemd",
    "/sys/fs/cgroup/memory",
    "/proc/kcore",
    "/proc/acpi",
)


def _mount_path(mountpoint: str) -> str:
    """CRIU writes mountpoints relative to the root ("./proc/acpi" or "/proc/acpi"): compare as absolute."""
    path = mountpoint.removeprefix(".")
    return "/" + path.strip("/")


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


@dataclass(frozen=True)
class AndroidProfile:
    """The stage. `dropped_mounts`: mountpoints removed with everything mounted below them."""

    dropped_mounts: tuple[str, ...] = DEFAULT_DROPPED_MOUNTS

    def __call__(self, images: ImageSet) -> None:
        for name in images.glob("core-*.img"):
            # Read-only first: a core with nothing to fix is copied byte for byte, not re-encoded.
            if _fix_core(images.read(name).entries[0].get(pb.core_entry), dry_run=True):
                _fix_core(images.edit(name).entries[0].get(pb.core_entry))
        for name in images.glob("mountpoints-*.img"):
            self._drop_mounts(images, name)

    def _drop_mounts(self, images: ImageSet, name: str) -> None:
        prefixes = tuple(_mount_path(p) for p in self.dropped_mounts)
        drop_mounts(images, name, lambda m: _under(_mount_path(m.mountpoint), prefixes))


@dataclass(frozen=True)
class AbsentMountpoints:
    """The stage for a target without some of the paths the dump has mounts on (Docker's masked /proc/acpi on an
    arm64 kernel): those mounts are dropped, with every mount below them (CRIU cannot mount on a path the target
    lacks)."""

    paths: tuple[str, ...]

    def __call__(self, images: ImageSet) -> None:
        prefixes = tuple(_mount_path(p) for p in self.paths)
        for name in images.glob("mountpoints-*.img"):
            drop_mounts(images, name, lambda m: _under(_mount_path(m.mountpoint), prefixes))


CGROUP_ROOT: Final = "/sys/fs/cgroup"


@dataclass(frozen=True)
class CgroupV1Mounts:
    """The stage for a device whose cgroups are v2 (one unified hierarchy) when the source's are v1: the
    per-controller cgroup mounts below /sys/fs/cgroup cannot be made there (CRIU finds no mapping for them and
    refuses), so they are dropped; /sys/fs/cgroup itself (the source's tmpfs) stays."""

    def __call__(self, images: ImageSet) -> None:
        for name in images.glob("mountpoints-*.img"):
            drop_mounts(images, name, lambda m: _mount_path(m.mountpoint).startswith(CGROUP_ROOT + "/"))


def drop_mounts(images: ImageSet, name: str, chosen: Callable[[pb.mnt_entry], bool]) -> None:
    """Remove the mounts `chosen` picks from mountpoints image `name`, with every mount below them."""
    entries = images.read(name).entries
    mounts = [e.get(pb.mnt_entry) for e in entries]
    dropped = {m.mnt_id for m in mounts if chosen(m)}
    # Children of a dropped mount would lose their parent: drop them too (to a fixed point).
    while True:
        more = {m.mnt_id for m in mounts if m.parent_mnt_id in dropped and m.mnt_id not in dropped}
        if not more:
            break
        dropped |= more
    if dropped:
        image = images.edit(name)
        image.entries = [e for e, m in zip(entries, mounts, strict=True) if m.mnt_id not in dropped]


def _seccomp_fields(core: pb.core_entry) -> list[tuple[Message, str]]:
    """The task's seccomp state that is set (a mode, with its filter reference)."""
    thread, task = core.thread_core, core.tc
    fields: list[tuple[Message, str]] = []
    if thread.seccomp_mode:
        fields += [(thread, "seccomp_mode"), (thread, "seccomp_filter")]
    if task.old_seccomp_mode:
        fields += [(task, "old_seccomp_mode"), (task, "old_seccomp_filter")]
    return fields


def clear_seccomp(core: pb.core_entry) -> bool:
    """Remove the task's seccomp state (True if it had any)."""
    fields = _seccomp_fields(core)
    for message, name in fields:
        message.ClearField(name)
    return bool(fields)


def _fix_core(core: pb.core_entry, *, dry_run: bool = False) -> bool:
    """Clear seccomp and LSM state that is set (explicit zeros stay as they are). True if any was set."""
    creds = core.thread_core.creds
    changes = _seccomp_fields(core) + [(creds, name) for name in ("lsm_profile", "lsm_sockcreate")
                                       if getattr(creds, name)]
    if not dry_run:
        for message, name in changes:
            message.ClearField(name)
    return bool(changes)
