"""What daemon and agent agree on for an emulated restore: where the device mounts the migration's files in
the target container, and their names there. The daemon makes the restorer's plan and the container's entry
point (`[MOUNT/EMULATOR, …, MOUNT/RESTORER, MOUNT/PLAN]`); the agent places its qemu-x86_64 in its images
directory, mounts that at MOUNT and reads the restorer's word from the FIFO MOUNT/STATUS."""

from __future__ import annotations

MOUNT = "/.androcond"  # read-only in the target container; no image uses the name
PLAN = "androcond-plan"  # the restorer's plan (written by the daemon from the CRIU images)
RESTORER = "androcond-restorer"  # androcond's x86_64 restorer (no libc), run by qemu-x86_64 as the guest
EMULATOR = "androcond-qemu-x86_64"  # the device's own static qemu-x86_64 (the image has none)
STATUS = "androcond-status"  # a FIFO: the restorer writes "ok\n" once the process is rebuilt, else "error: …"
