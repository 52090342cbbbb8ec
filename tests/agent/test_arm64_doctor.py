"""A device from adb alone, on the arm64 device (a Debian arm64 kernel in qemu, built as a target):
`androcond devices doctor` finds every requirement there, and with its runc.conf moved aside names exactly
that, what fails without it and the fix, and exits non-zero (the file is put back whatever happens); the agent
as one file (`devices bundle`) serves there on the guest's own python3 with nothing but its cryptography."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from androcond.build import build_version
from androcond.provision.bundle import build

from ..testbed.arm64 import Arm64Device
from ..testbed.proc import wait_for
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


ONE_FILE_PORT = 8023


def test_the_agent_file_serves_on_the_device_s_own_python(arm64_device: Arm64Device, tmp_path: Path) -> None:
    """`devices bundle` → adb push → the guest's python3 with -S and a path holding only its cryptography (and
    cffi) serves the agent on a port of its own; the daemon's `devices` reaches it over adb and reads its hello.
    Its import time and idle RSS there are printed (docs/performance.md)."""
    sh = arm64_device.adb_shell
    agent_file = tmp_path / "androcond-agent.pyz"
    build(agent_file)
    pushed = "/tmp/androcond-agent.pyz"
    arm64_device.adb_push(agent_file, pushed)
    sh("rm -rf /tmp/only-crypto /tmp/pyz-spool && mkdir -p /tmp/only-crypto /tmp/pyz-spool && "
       "site=$(python3 -c 'import cryptography, os; print(os.path.dirname(os.path.dirname(cryptography.__file__)))')"
       " && for f in cryptography cffi pycparser $(cd $site && ls -d _cffi_backend*.so); do "
       "[ -e $site/$f ] && ln -s $site/$f /tmp/only-crypto/$f; done; "
       f"sed -e 's/:8022\"/:{ONE_FILE_PORT}\"/' -e 's#/var/lib/androcond/spool#/tmp/pyz-spool#' "
       "/etc/androcond/agent.toml > /tmp/pyz-agent.toml", timeout=120)
    bare = "PYTHONPATH=/tmp/only-crypto python3 -S"
    started = time.monotonic()
    helped = sh(f"{bare} {pushed} agent serve --help", timeout=300)
    cold_s = time.monotonic() - started
    assert "usage: androcond agent serve" in helped
    started = time.monotonic()
    assert "usage: androcond agent serve" in sh("python3 -m androcond agent serve --help", timeout=300)
    installed_s = time.monotonic() - started  # the agent installed from wheels, byte-compiled: the baseline
    pid = sh(f"PYTHONPATH=/tmp/only-crypto setsid python3 -S {pushed} agent serve --config /tmp/pyz-agent.toml "
             ">/tmp/pyz-agent.log 2>&1 </dev/null & echo $!",
             timeout=120).strip()
    try:
        table = f"""
[devices.onefile]
adb_serial = "{arm64_device.adb_serial}"
agent_port = {ONE_FILE_PORT}
identity = "{arm64_device.client_key}"
known_hosts = "{tmp_path / 'known_hosts'}"
[timeouts]
connect = 60
"""
        (tmp_path / "known_hosts").write_text(arm64_device.agent_known_hosts_line(arm64_device.adb_serial))
        config = tmp_path / "androcond.toml"
        config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n' + table)

        def listening() -> bool:
            return f":{ONE_FILE_PORT:04X} " in sh("cat /proc/net/tcp", timeout=60)

        wait_for(listening, timeout=180, interval=1, what="the agent file listening on the device")
        done = subprocess.run([sys.executable, "-m", "androcond", "devices", "--json", "--config", str(config)],
                              capture_output=True, text=True, timeout=300, check=False)
        (status,) = json.loads(done.stdout)["devices"]
        assert status["reachable"], (status, sh("tail -5 /tmp/pyz-agent.log", timeout=60))
        assert status["isa"] == "aarch64" and status["agent_version"] == build_version()
        rss = sh(f"grep VmRSS /proc/{pid}/status", timeout=60).split()[1]
        print(f"agent file: {agent_file.stat().st_size} bytes; `agent serve --help` cold on the device: "
              f"{cold_s:.1f} s against {installed_s:.1f} s installed (adb included); idle RSS {int(rss) // 1024} MiB")
    finally:
        sh(f"kill {pid}; rm -rf /tmp/only-crypto /tmp/pyz-spool /tmp/pyz-agent.toml {pushed}", timeout=120)
