"""The arm64 device in the agent tests: one qemu-system-aarch64 guest per test session (booting under TCG takes
30-60 s), shared by every test that needs it, and the daemon-config table that reaches it over adb."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..recoder.build import build_twoisa
from ..testbed.arm64 import Arm64Device, base_built, base_rootfs, ensure_image
from ..testbed.engines import DockerEngine
from ..testbed.images import rootfs_tar
from ..tiers import unavailable

BUILD_ALLOWED = bool(os.environ.get("ANDROCOND_ARM64"))

# Marks for a module of arm64 tests (the fixture below says what is missing when the image is not built).
ARM64_MARKS = [
    pytest.mark.testbed,
    # Everything in the guest is emulated; a first build takes up to 30 min more.
    pytest.mark.timeout(600 if base_built() else 3600),
]


# While working on the tests: attach to a device booted by `python -m tests.testbed.arm64 boot` (the JSON line it
# prints) instead of booting one; it is left running. Its agent is the one its image was built with.
ATTACH = os.environ.get("ANDROCOND_ARM64_ATTACH", "")


@pytest.fixture(scope="session")
def arm64_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64Device]:
    if ATTACH:
        yield Arm64Device.attached(ATTACH)
        return
    if not base_built() and not BUILD_ALLOWED:
        unavailable("the arm64 image is not built (about 15 min once: scripts/setup.sh builds it, or set "
                    "ANDROCOND_ARM64=1 to build it here)")
    device = Arm64Device(tmp_path_factory.mktemp("arm64"), ensure_image())
    device.up()
    try:
        yield device
    finally:
        device.down()


def arm64_device_table(device: Arm64Device, directory: Path, name: str = "arm64", extra: str = "") -> str:
    """A `[devices.<name>]` table for the daemon's config: adb to the guest, the agent's port, its host key."""
    known_hosts = directory / f"known_hosts-{name}"
    known_hosts.write_text(device.agent_known_hosts_line(device.adb_serial))
    return f"""
[devices.{name}]
adb_serial = "{device.adb_serial}"
agent_port = 8022
identity = "{device.client_key}"
known_hosts = "{known_hosts}"
{extra}
"""


BIN = "twoisa"


def install_twoisa_image(engine_a: DockerEngine, device: Arm64Device, work: Path) -> str:
    """The two-ISA program's image under one name on engine A (x86_64 busybox) and on the device (its aarch64
    busybox, so `docker exec` works there), both with `<bin>` = the x86_64 build, `<bin>_x86-64` and
    `<bin>_aarch64` in bin/. Tagged by the binaries, so a changed program is a new image."""
    built = build_twoisa(work / "bin")
    programs = {BIN: built["x86_64"], f"{BIN}_x86-64": built["x86_64"], f"{BIN}_aarch64": built["aarch64"]}
    digest = hashlib.sha256(b"".join(p.read_bytes() for _, p in sorted(programs.items())))
    image = f"androcond-test/twoisa:{digest.hexdigest()[:12]}"
    if not engine_a.has_image(image):
        engine_a.cli("import", "-", image, input_bytes=rootfs_tar(programs))
    device_tar = work / "twoisa-aarch64.tar"
    device_tar.write_bytes(rootfs_tar(programs, busybox=base_rootfs() / "bin" / "busybox"))
    device.adb_push(device_tar, "/tmp/twoisa.tar")
    device.adb_shell(f"docker image inspect {image} >/dev/null 2>&1 || docker import /tmp/twoisa.tar {image} "
                     ">/dev/null; rm -f /tmp/twoisa.tar", timeout=300)
    device_tar.unlink()
    return image
