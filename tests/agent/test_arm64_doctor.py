"""`androcond devices doctor` over adb alone on the arm64 device (a Debian arm64 kernel in qemu, built as a
target): every requirement is there; with its runc.conf moved aside, doctor names exactly that, what fails
without it and the fix, and exits non-zero. The file is put back whatever happens."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from ..testbed.arm64 import Arm64Device
from .arm64_bed import ARM64_MARKS

pytestmark = ARM64_MARKS


def _doctor(device: Arm64Device) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "androcond", "devices", "doctor", "--adb", device.adb_serial,
                           "--json"], capture_output=True, text=True, timeout=300, check=False)
    return done.returncode, json.loads(done.stdout)


def test_doctor_reads_the_device_over_adb(arm64_device: Arm64Device) -> None:
    code, report = _doctor(arm64_device)
    by_name = {r["name"]: r for r in report["requirements"]}
    assert code == 0 and report["ready"], [r for r in report["requirements"] if r["state"] != "ok"]
    assert by_name["isa"]["detail"].startswith("aarch64, kernel ")
    assert by_name["kernel CHECKPOINT_RESTORE"]["detail"].startswith("CONFIG_CHECKPOINT_RESTORE=y (/boot/config-")
    assert by_name["address bits"]["detail"] == "48-bit user addresses"
    assert "androcond" in by_name["androcond runtime"]["detail"]
    assert by_name["criu"]["detail"].startswith("Version: 4.")

    sh = arm64_device.adb_shell
    sh("mv /etc/criu/runc.conf /etc/criu/runc.conf.doctor-test", timeout=120)
    try:
        code, report = _doctor(arm64_device)
    finally:
        sh("mv /etc/criu/runc.conf.doctor-test /etc/criu/runc.conf", timeout=120)
    missing = [r for r in report["requirements"] if r["state"] == "missing"]
    assert code == 1 and not report["ready"]
    assert [r["name"] for r in missing] == ["/etc/criu/runc.conf"]
    assert missing[0]["fix"] == "add tcp-close to /etc/criu/runc.conf"
    assert "tcp-close" in sh("cat /etc/criu/runc.conf", timeout=120)
