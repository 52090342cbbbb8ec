"""A device from adb alone: the bare variant of the arm64 device (Docker with its stock configuration, CRIU,
adbd, python3 with cryptography; nothing of androcond) becomes a target with `androcond devices setup`, over adb
only. `doctor` lists exactly what it lacks before and nothing after; the two-ISA container then moves there and
counts on; after a reboot of the guest the agent answers again; a second setup changes nothing; an agent of
another build is told apart at hello and setup upgrades it; `remove` leaves the device as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from androcond.build import build_version
from androcond.engine import Engine
from androcond.provision.bundle import build as build_agent_file

from ..helpers import DaemonProcess
from ..testbed import TestBed
from ..testbed.arm64 import Arm64Device, base_built, ensure_bare_image
from ..testbed.bed import TEST_LABEL, TEST_RUN
from ..testbed.proc import wait_for
from ..testbed.twoisa import BIN, install_twoisa_image
from ..tiers import unavailable
from .arm64_bed import ARM64_MARKS, BUILD_ALLOWED
from .conftest import AgentBed
from .daemon_bed import finished, running, write_daemon_config
from .test_cross_isa_resume import LOG, assert_resumed, counting_on_x86, device_log

pytestmark = ARM64_MARKS

NAME = "bare"
DIRECTORY = "/var/lib/androcond"
LACKING_BEFORE_SETUP = {"engine experimental", "androcond runtime", "/etc/criu/runc.conf", "agent"}


@pytest.fixture(scope="module")
def bare_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64Device]:
    if not base_built() and not BUILD_ALLOWED:
        unavailable("the arm64 image is not built (scripts/setup.sh builds it, or set ANDROCOND_ARM64=1)")
    device = Arm64Device(tmp_path_factory.mktemp("arm64-bare"), ensure_bare_image(), bare=True)
    device.up()
    try:
        yield device
    finally:
        device.down()


def _androcond(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "androcond", *argv], capture_output=True, text=True, timeout=900,
                          check=False)


def _doctor(device: Arm64Device) -> tuple[int, set[str]]:
    done = _androcond("devices", "doctor", "--adb", device.adb_serial, "--json")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, {r["name"] for r in json.loads(done.stdout)["requirements"] if r["state"] == "missing"}


def _status(config: Path) -> dict[str, Any]:
    done = _androcond("devices", "--json", "--config", str(config))
    (status,) = (d for d in json.loads(done.stdout)["devices"] if d["name"] == NAME)
    assert isinstance(status, dict)
    return status


def _device_state(device: Arm64Device) -> str:
    """What setup may touch on the device, as text: the engine's daemon.json, /etc/criu, the agent's directory
    and unit."""
    return device.adb_shell("for f in /etc/docker/daemon.json /etc/criu /etc/criu/runc.conf "
                            f"{DIRECTORY} /etc/systemd/system/androcond-agent-{NAME}.service; do "
                            "[ -e $f ] && { ls -ld $f | cut -d' ' -f1,3,4; cat $f 2>/dev/null; } || echo absent $f; "
                            "done", timeout=120)


def _older_build(agent_file: Path, out: Path) -> None:
    """The agent file with another build recorded in it: what an agent set up by an older androcond answers."""
    with zipfile.ZipFile(agent_file) as old, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            data = b"0.0.9+0123456789ab\n" if item.filename == "androcond/BUILD" else old.read(item)
            new.writestr(item, data)


async def test_setup_makes_the_bare_device_a_target_that_survives_a_reboot_and_remove_undoes_it(
        bare_device: Arm64Device, testbed: TestBed, agent_server: AgentBed, engine_a: Engine, tmp_path: Path,
        unique_name: str) -> None:
    before = _device_state(bare_device)
    assert f"absent {DIRECTORY}" in before and "absent /etc/criu" in before
    code, lacking = _doctor(bare_device)
    assert (code, lacking) == (1, LACKING_BEFORE_SETUP)

    config = write_daemon_config(agent_server, tmp_path, extra="[timeouts]\nconnect = 60\n")
    identity = bare_device.client_key
    setup = ["devices", "setup", NAME, "--adb", bare_device.adb_serial, "--identity", str(identity),
             "--known-hosts", str(tmp_path / "known_hosts"), "--config", str(config)]
    try:
        first = _androcond(*setup)
        assert first.returncode == 0, first.stderr
        for change in ("installed the agent file", "made the agent's host key on the device",
                       "registered androcond's runtime", "restarted the engine", "added tcp-close",
                       f"added [devices.{NAME}]"):
            assert change in first.stdout, first.stdout
        assert f"agent {build_version()} answers" in first.stdout
        print(first.stdout)
        assert _doctor(bare_device) == (0, set())
        # The host key came over adb: the daemon trusts the key the device made, under its adb serial.
        assert (tmp_path / "known_hosts").read_text().startswith(f"{bare_device.adb_serial} ssh-ed25519 ")
        status = _status(config)
        assert status["reachable"] and status["agent_current"], status
        assert status["isa"] == "aarch64" and status["fast_restore"], status

        await _the_two_isa_container_moves_there(bare_device, testbed, agent_server, engine_a, config, tmp_path,
                                                 unique_name)

        bare_device.reboot()
        wait_for(lambda: bool(_status(config)["reachable"]), timeout=180, interval=2,
                 what="the agent answering after the guest's reboot")

        second = _androcond(*setup)
        assert second.returncode == 0, second.stderr
        assert f"{NAME}: nothing changed" in second.stdout, second.stdout
        assert f"already has [devices.{NAME}]" in second.stdout

        ours, older = tmp_path / "ours.pyz", tmp_path / "older.pyz"
        build_agent_file(ours)
        _older_build(ours, older)
        bare_device.adb_push(older, f"{DIRECTORY}/androcond-agent.pyz")
        bare_device.adb_shell(f"systemctl restart androcond-agent-{NAME}", timeout=120)
        wait_for(lambda: bool(_status(config)["reachable"]), timeout=180, interval=2, what="the older agent")
        status = _status(config)
        assert (status["agent_version"], status["agent_current"]) == ("0.0.9+0123456789ab", False), status
        listed = _androcond("devices", "--config", str(config)).stdout
        assert f"androcond devices setup {NAME}` upgrades it" in listed, listed
        upgrade = _androcond(*setup)
        assert upgrade.returncode == 0, upgrade.stderr
        assert "installed the agent file" in upgrade.stdout and f"agent {build_version()} answers" in upgrade.stdout
        assert _status(config)["agent_current"]
    finally:
        removed = _androcond("devices", "remove", NAME, "--adb", bare_device.adb_serial, "--dir", DIRECTORY)
    assert removed.returncode == 0, removed.stderr
    assert _device_state(bare_device) == before
    # No container runs there (the reboot stopped the one that moved): the engine restarted as it was.
    assert "restarted the engine" in removed.stdout, removed.stdout
    assert _doctor(bare_device) == (1, LACKING_BEFORE_SETUP)


async def _the_two_isa_container_moves_there(device: Arm64Device, testbed: TestBed, agent: AgentBed,
                                             engine: Engine, config: Path, work: Path, name: str) -> None:
    image = install_twoisa_image(testbed.engine_a, device, work / "twoisa")
    daemon = DaemonProcess(config, env=dict(os.environ))
    try:
        labels = {TEST_LABEL: TEST_RUN, "androcond.migrate": NAME, "androcond.delay": "2s"}
        cid = await engine.create_container({"Image": image, "Cmd": [f"/bin/{BIN}", LOG], "Labels": labels},
                                            name=name)
        await engine.start_container(cid)
        await counting_on_x86(engine, name, 1)
        await daemon.start()
        end = await finished(daemon, name, timeout=300)
    finally:
        await daemon.kill()
    assert end["state"] == "done", end.get("detail")
    assert not await running(engine, name)
    wait_for(lambda: sum(1 for line in device_log(device, name) if line[2] == "aarch64") >= 3, timeout=120,
             interval=1, what="counting on the set-up device")
    assert assert_resumed(device_log(device, name), role=0) >= 3
