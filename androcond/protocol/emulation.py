"""What daemon and agent agree on for an emulated restore: where the device mounts the migration's files in
the target container, and their names there. The daemon makes the restorer's plan and the container's entry
point (`[MOUNT/EMULATOR, …, MOUNT/RESTORER, MOUNT/PLAN]`); the agent places its qemu-x86_64 in its images
directory, mounts that at MOUNT and reads the restorer's word from the FIFO MOUNT/STATUS."""

from __future__ import annotations

from pathlib import Path

MOUNT = "/.androcond"  # read-only in the target container; no image uses the name
PLAN = "androcond-plan"  # the restorer's plan (written by the daemon from the CRIU images)
RESTORER = "androcond-restorer"  # androcond's x86_64 restorer (no libc), run by qemu-x86_64 as the guest
EMULATOR = "androcond-qemu-x86_64"  # the device's own static qemu-x86_64 (the image has none)
STATUS = "androcond-status"  # a FIFO: the restorer writes "ok\n" once the process is rebuilt, else "error: …"

# qemu's gdb stub, for reading the emulated process out later (the way home, docs/emulation.md): the guest's
# registers live in qemu, not in the kernel. Its socket needs a writable directory (MOUNT is read-only): the
# device mounts a small tmpfs of the container's own at STUB_MOUNT. qemu 10 runs the guest at once with
# `suspend=n` and accepts one connection per run; older versions read the option as part of the path and wait.
STUB_MOUNT = "/.androcond-stub"
STUB_SOCKET = "gdb.sock"
STUB_MIN_QEMU = (10, 0)


def native_argv() -> list[str]:
    """The restorer run natively (the way home from emulation): the process it rebuilds is x86_64 already."""
    return [f"{MOUNT}/{RESTORER}", f"{MOUNT}/{PLAN}"]


# Started once by androcond's runtime, the restorer runs from a copy in the container's own root filesystem: the
# process it becomes keeps its executable as `/proc/self/exe`, and there it holds nothing of MOUNT, which is
# unmounted once the restorer has read it (a mount the engine does not know would fail every later checkpoint's
# restore, at home too). The copy is removed then; CRIU carries a removed executable as a ghost file.
ROOTFS_RESTORER = "/.androcond-restorer"
RESTORER_MOUNTED = (f"androcond's restorer rebuilt it, and its directory is still mounted at {MOUNT} (it could not "
                    "be unmounted then): a checkpoint of it could not be restored, here or elsewhere; restart the "
                    "container to move it")


def once_argv() -> list[str]:
    """The restorer's argv when androcond's runtime starts the container once with it."""
    return [ROOTFS_RESTORER, f"{MOUNT}/{PLAN}"]


def restorer_mounted(pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether MOUNT is (still) mounted in the container of process `pid`. False when the process is gone."""
    try:
        mountinfo = (proc / str(pid) / "mountinfo").read_text()
    except OSError:
        return False
    return any(len(fields) > 4 and fields[4] == MOUNT for fields in map(str.split, mountinfo.splitlines()))


def stub_supported(emulator_version: str) -> bool:
    """Whether a qemu-x86_64 of this version ("10.0.13") runs its gdb stub without waiting for a debugger."""
    try:
        major, minor = (int(part) for part in emulator_version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= STUB_MIN_QEMU


def stub_argv() -> list[str]:
    """qemu-x86_64's options for the stub: listening on STUB_MOUNT/STUB_SOCKET, the guest running at once."""
    return ["-g", f"{STUB_MOUNT}/{STUB_SOCKET},suspend=n"]
