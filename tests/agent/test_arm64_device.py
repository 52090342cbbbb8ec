"""The arm64 device (qemu-system-aarch64 under TCG, tests/testbed/arm64.py): adb reaches it, its agent says
hello through an adb forward with the facts of an arm64 kernel, and `androcond devices` lists it as a cross-ISA
target.

Needs the arm64 root tree in the cache (about 12 min to build once): without it, and without ANDROCOND_ARM64 set
(which lets the test build it), the test is skipped. The rest of the image is rebuilt in about a minute when
androcond changes.
"""

from __future__ import annotations

import asyncio
import io
import json
import platform
import sys
from pathlib import Path

import asyncssh
import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from androcond.build import build_version
from androcond.engine import Engine
from androcond.link.adb import AdbClient
from androcond.link.ssh import Endpoint, PhaseTimeouts
from androcond.link.transport import AgentConnection

from ..helpers import DaemonProcess, counter_config, wait_for_count
from ..testbed.arm64 import Arm64Device
from ..testbed.proc import wait_for
from ..testbed.twoisa import arm64_device_table
from .arm64_bed import ARM64_MARKS
from .conftest import AgentBed
from .daemon_bed import finished, write_daemon_config

pytestmark = ARM64_MARKS

# Everything in the guest is emulated: generous phase timeouts.
TIMEOUTS = PhaseTimeouts(connect=60.0, hello=60.0)


def test_adb_shell_is_aarch64(arm64_device: Arm64Device) -> None:
    assert arm64_device.adb_shell("uname -m").strip() == "aarch64"


async def test_agent_hello_through_adb(arm64_device: Arm64Device, tmp_path: Path) -> None:
    serial = arm64_device.adb_serial
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(arm64_device.agent_known_hosts_line(serial))
    adb = AdbClient()
    port = await adb.forward(serial, 8022)
    try:
        endpoint = Endpoint("127.0.0.1", port, "root", arm64_device.client_key, known_hosts,
                            host_key_alias=serial)
        async with await AgentConnection.open(endpoint, TIMEOUTS) as link:
            hello = link.hello
    finally:
        await adb.killforward(serial, port)
    assert hello.isa == "aarch64"
    assert hello.agent_version == build_version()
    assert hello.page_size == 4096
    assert hello.criu_version.startswith("4."), hello.criu_version
    assert hello.engine_version, "the guest's Docker engine did not answer the agent"
    assert hello.va_bits == 48
    assert hello.androcond_runtime  # daemon.json registers androcond's runc wrapper
    # trixie's qemu-user (static binaries) emulates x86_64 containers; qemu-user-binfmt registers it.
    assert hello.emulator.rsplit("/", 1)[-1] in ("qemu-x86_64", "qemu-x86_64-static"), hello.emulator
    assert hello.emulator_version.startswith("10."), hello.emulator_version
    elf = ELFFile(io.BytesIO(hello.vdso))
    assert elf["e_machine"] == "EM_AARCH64"
    dynsym = elf.get_section_by_name(".dynsym")
    assert isinstance(dynsym, SymbolTableSection)
    assert "__kernel_clock_gettime" in {symbol.name for symbol in dynsym.iter_symbols()}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="cross_isa is judged from an x86_64 host")
async def test_devices_lists_it_cross_isa(arm64_device: Arm64Device, tmp_path: Path) -> None:
    serial = arm64_device.adb_serial
    config = tmp_path / "androcond.toml"
    config.write_text(arm64_device_table(arm64_device, tmp_path))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "androcond", "devices", "--json",
                                                "--config", str(config), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    (device,) = json.loads(out)["devices"]
    assert device["reachable"], device["error"]
    assert device["reached_by"] == f"adb {serial}"
    assert device["isa"] == "aarch64"
    assert device["va_bits"] == 48
    assert device["vdso_size"] > 0 and device["vdso_size"] % 4096 == 0 and device["vvar_size"] > 0
    assert device["cross_isa"] is True
    assert device["emulation"] is True and device["emulate"] == "auto"
    assert device["emulator"] and device["emulator_version"].startswith("10.")
    assert isinstance(device["binfmt_x86_64"], bool)  # whether its entry has flag F is the package's choice
    assert device["agent_version"] == build_version()


async def test_a_plain_x86_64_container_is_refused_before_the_freeze(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, tmp_path: Path, unique_name: str) -> None:
    """The same image, no Popcorn binaries, and a device that must not emulate: an x86_64 process cannot resume
    on aarch64. Preflight says so and the container keeps running at the source (nothing frozen)."""
    table = arm64_device_table(arm64_device, tmp_path, extra="emulate = false")
    config = write_daemon_config(agent_server, tmp_path, extra=table + """
[timeouts]
connect = 60
""")
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        await engine_a.start_container(await engine_a.create_container(
            counter_config(**{"androcond.migrate": "arm64"}), name=unique_name))
        end = await finished(daemon, unique_name, timeout=180)
        assert end["state"] == "rejected", end
        assert "cannot move to an aarch64 device" in end["detail"], end
        assert not any(e.get("state") == "checkpointing" for e in daemon.lines)
        seen = await wait_for_count(engine_a, unique_name, at_least=3)
        assert seen == list(range(seen[0], seen[0] + len(seen))), "the source was disturbed"
    finally:
        await daemon.kill()


COUNTER = ("i=0; while true; do i=$((i+1)); echo count $i; /bin/busybox sleep 0.2; done")


def _counts(device: Arm64Device, name: str) -> list[int]:
    logs = device.adb_shell(f"docker logs {name} 2>&1", timeout=120)
    return [int(line.split()[1]) for line in logs.splitlines() if line.startswith("count ")]


def _wait_counts(device: Arm64Device, name: str, at_least: int, timeout: float = 180) -> list[int]:
    seen: list[int] = []

    def counted() -> bool:
        seen[:] = _counts(device, name)
        return bool(seen) and seen[-1] >= at_least

    wait_for(counted, timeout=timeout, interval=0.5, what=f"{name} counting to {at_least} on the device")
    return seen


def test_the_devices_own_criu_checkpoints_and_restores_a_counter(arm64_device: Arm64Device) -> None:
    """A process-level round trip on the device itself: an aarch64 counter (the guest's static busybox) is
    checkpointed and restored by the VM's CRIU through its Docker engine, and counts on."""
    sh = arm64_device.adb_shell
    name = "acd-arm64-roundtrip"
    sh("set -e; d=/tmp/acd-img; rm -rf $d; mkdir -p $d/bin; cp /bin/busybox $d/bin/busybox; "
       "tar -C $d -c . | docker import - androcond-test/arm64-busybox >/dev/null; rm -rf $d", timeout=300)
    sh(f"docker rm -f {name} >/dev/null 2>&1; docker run -d --name {name} androcond-test/arm64-busybox "
       f"/bin/busybox sh -c '{COUNTER}' >/dev/null", timeout=300)
    try:
        before = _wait_counts(arm64_device, name, at_least=3)
        assert sh(f"docker exec {name} /bin/busybox uname -m", timeout=120).strip() == "aarch64"
        sh(f"docker checkpoint create {name} cp1 >/dev/null", timeout=300)
        frozen = _counts(arm64_device, name)
        assert frozen[-1] >= before[-1]
        sh(f"docker start --checkpoint cp1 {name}", timeout=300)
        after = _wait_counts(arm64_device, name, at_least=frozen[-1] + 3)
        resumed = after[len(frozen):]
        assert resumed[0] == frozen[-1] + 1, f"restarted instead of restored: {frozen[-2:]} then {resumed[:2]}"
    finally:
        sh(f"docker rm -f {name} >/dev/null 2>&1 || true", timeout=120)


async def test_the_guests_openssh_through_an_adb_forward_runs_a_shell_and_the_agent(
        arm64_device: Arm64Device, tmp_path: Path) -> None:
    """As one reaches a phone's sshd over adb: a forward to the guest's port 22, an ssh session there, and
    `androcond agent stdio` under that OpenSSH server saying hello from aarch64."""
    serial = arm64_device.adb_serial
    known_hosts = tmp_path / "known_hosts"
    public = arm64_device.host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"{serial}-sshd {public[0]} {public[1]}\n")  # the forward's port changes: an alias
    adb = AdbClient()
    port = await adb.forward(serial, 22)
    try:
        async with asyncssh.connect("127.0.0.1", port, username="root", client_keys=[str(arm64_device.client_key)],
                                    known_hosts=str(known_hosts), host_key_alias=f"{serial}-sshd") as ssh:
            banner = await ssh.run("uname -m; cat /proc/sys/kernel/osrelease", check=True, timeout=60)
        isa, release = str(banner.stdout).split()
        assert isa == "aarch64"
        command = "python3 -m androcond agent stdio --config /etc/androcond/agent.toml"
        endpoint = Endpoint("127.0.0.1", port, "root", arm64_device.client_key, known_hosts,
                            host_key_alias=f"{serial}-sshd", agent_command=command)
        async with await AgentConnection.open(endpoint, TIMEOUTS) as link:
            hello = link.hello
    finally:
        await adb.killforward(serial, port)
    assert (hello.isa, hello.kernel_release, hello.agent_version) == ("aarch64", release, build_version())
    assert hello.cgroup2 and "tcp-close" in hello.criu_runc_options
