"""`androcond devices` against the test bed: one device through adb, one by address, one that is away."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from androcond.build import build_version

from .conftest import AGENT_PORT, AgentBed

pytestmark = pytest.mark.testbed


async def test_devices_json(agent_server: AgentBed, tmp_path: Path) -> None:
    bed = agent_server.bed
    public = agent_server.host_key.export_public_key().decode().strip()
    known_hosts = tmp_path / "known_hosts"
    # Through adb the agent is found under its adb serial; by address under [host]:port.
    known_hosts.write_text(f"{bed.adb_serial} {public}\n[{bed.device.device_ip}]:{AGENT_PORT} {public}\n")
    config = tmp_path / "androcond.toml"
    config.write_text(f"""
[devices.usb]
adb_serial = "{bed.adb_serial}"
agent_port = {AGENT_PORT}
identity = "{bed.device.client_key}"
known_hosts = "{known_hosts}"
[devices.net]
address = "{bed.device.device_ip}:{AGENT_PORT}"
lazy = "auto"
identity = "{bed.device.client_key}"
known_hosts = "{known_hosts}"
[devices.away]
address = "{bed.device.device_ip}:1"
identity = "{bed.device.client_key}"
known_hosts = "{known_hosts}"
""")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "androcond", "devices", "--json",
                                                "--config", str(config), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    devices = {d["name"]: d for d in json.loads(out)["devices"]}
    assert devices["usb"]["reachable"], devices["usb"]["error"]
    assert devices["usb"]["adb_state"] == "device"
    assert devices["usb"]["reached_by"] == f"adb {bed.adb_serial}"
    for name in ("usb", "net"):
        assert devices[name]["isa"] == "x86_64"
        assert devices[name]["agent_version"] == build_version()
        assert devices[name]["engine_version"].startswith("20.10")
        assert devices[name]["va_bits"] == 47 and devices[name]["cross_isa"] is None  # same ISA: no recode
        assert devices[name]["fast_restore"] is True  # the bed's engine B has androcond's runtime
        assert devices[name]["post_copy"] is True  # ... and its kernel userfaultfd
        assert devices[name]["criu_dumps_sockets"] is True and devices[name]["criu_version"]
        # An x86_64 device runs x86_64 containers natively: no emulator reported, emulation not in question.
        assert (devices[name]["emulator"], devices[name]["emulator_version"]) == ("", "")
        assert devices[name]["emulation"] is None and devices[name]["binfmt_x86_64"] is False
    assert (devices["usb"]["lazy"], devices["net"]["lazy"]) == ("false", "auto")
    assert not devices["away"]["reachable"]
    assert devices["away"]["criu_dumps_sockets"] is None  # not reached: not known, not "no"
    assert devices["away"]["emulation"] is None and devices["away"]["binfmt_x86_64"] is None
    assert "cannot connect" in devices["away"]["error"]
    # The adb forward made for the probe is gone again.
    forwards = await asyncio.to_thread(bed.adb.adb, "forward", "--list")
    assert f"tcp:{AGENT_PORT}" not in forwards
