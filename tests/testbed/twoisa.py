"""The two-ISA program (tests/recoder/programs/twoisa/, the stand-in for a Popcorn binary) on the arm64 device:
its image on both engines, and the daemon-config table that reaches the device over adb. Shared by the arm64
tests, the cross-ISA benchmark and the demo."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..recoder.build import build_twoisa
from .arm64 import Arm64Device, base_rootfs
from .engines import DockerEngine
from .images import rootfs_tar

BIN = "twoisa"


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


def install_twoisa_image(engine_a: DockerEngine, device: Arm64Device, work: Path, *,
                         regset_in_bss: bool = False) -> str:
    """The two-ISA program's image under one name on engine A (x86_64 busybox) and on the device (its aarch64
    busybox, so `docker exec` works there), both with `<bin>` = the x86_64 build, `<bin>_x86-64` and
    `<bin>_aarch64` in bin/. Tagged by the binaries, so a changed program is a new image. `regset_in_bss`: the
    build whose regs_dst and tls_dst lie in .bss."""
    built = build_twoisa(work / "bin", regset_in_bss=regset_in_bss)
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
