"""When androcond keeps CRIU's kernel probe for it: where /run is not a tmpfs and holds none of this boot."""

from __future__ import annotations

from pathlib import Path

from androcond.criu import kdat

MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:23 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw
31 22 0:28 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw,mode=755
40 22 0:30 / /run/user/0 rw shared:20 - tmpfs tmpfs rw
41 22 0:31 / /mnt/with\\040space rw shared:21 - vfat /dev/vdb rw
"""


def test_the_filesystem_of_a_path_is_its_deepest_mount() -> None:
    table = kdat.mounts(MOUNTINFO)
    assert kdat.fstype_of(Path("/run"), table) == "ext4"  # /run/user is deeper, not above it
    assert kdat.fstype_of(Path("/run/user/0/x"), table) == "tmpfs"
    assert kdat.fstype_of(Path("/dev/shm"), table) == "tmpfs"
    assert kdat.fstype_of(Path("/dev/shmem"), table) == "ext4"  # a prefix of the name is not a parent
    assert kdat.fstype_of(Path("/mnt/with space/a"), table) == "vfat"
    assert kdat.fstype_of(Path("/run"), kdat.mounts(MOUNTINFO + "50 22 0:40 / /run rw - tmpfs tmpfs rw\n")) \
        == "tmpfs"  # mounted over


def test_a_probe_is_kept_only_where_criu_keeps_none_of_this_boot() -> None:
    booted = 1_000_000.0
    run = Path("/run")
    assert kdat.why_probe(run, "tmpfs", None, booted) == ""  # CRIU keeps its own
    assert kdat.why_probe(run, "", None, booted) == ""  # no /run at all (Android): nowhere to keep it
    assert kdat.why_probe(run, "ext4", booted + 5, booted) == ""  # this boot's
    assert "holds no probe (criu.kdat)" in kdat.why_probe(run, "ext4", None, booted)
    assert "no probe of this boot" in kdat.why_probe(run, "overlay", booted - 5, booted)  # another kernel's, maybe


def test_boot_time() -> None:
    assert kdat.boot_time("cpu  1 2 3\nbtime 1796599726\nprocesses 9\n") == 1796599726.0
    assert kdat.boot_time("cpu 1\n") == 0.0
