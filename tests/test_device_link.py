"""The device link on the real test bed: adb server → adbd in the device namespace → forward → sshd."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest

from .testbed import TestBed

pytestmark = pytest.mark.testbed


def adb(bed: TestBed, *args: str) -> str:
    return bed.adb.adb("-s", bed.adb_serial, *args)


async def test_adb_sees_the_device(testbed: TestBed) -> None:
    listing = await asyncio.to_thread(testbed.adb.adb, "devices", "-l")
    line = next(ln for ln in listing.splitlines() if ln.startswith(testbed.adb_serial))
    assert line.split()[1] == "device"
    machine = await asyncio.to_thread(adb, testbed, "shell", "uname", "-m")
    assert machine.strip() == "x86_64"


async def test_ssh_session_through_adb_forward(testbed: TestBed) -> None:
    port = int((await asyncio.to_thread(adb, testbed, "forward", "tcp:0", f"tcp:{testbed.sshd_port}")).strip())
    try:
        known_hosts = asyncssh.import_known_hosts(testbed.device.known_hosts_line("127.0.0.1", port))
        async with asyncssh.connect("127.0.0.1", port, username="root", known_hosts=known_hosts,
                                    client_keys=[str(testbed.device.client_key)]) as conn:
            result = await conn.run("cat /proc/net/dev; ip -o -4 addr show", check=True, timeout=30)
        # The session runs on the device: its network namespace, not the host's.
        assert isinstance(result.stdout, str)
        assert testbed.device.device_if in result.stdout
        assert testbed.device.device_ip in result.stdout
    finally:
        await asyncio.to_thread(adb, testbed, "forward", "--remove", f"tcp:{port}")


async def test_ssh_refuses_an_unknown_host_key(testbed: TestBed, tmp_path: object) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    wrong = asyncssh.import_known_hosts(
        f"[{testbed.device.device_ip}]:{testbed.sshd_port} {other.export_public_key().decode()}")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with asyncssh.connect(testbed.device.device_ip, testbed.sshd_port, username="root",
                                    known_hosts=wrong, client_keys=[str(testbed.device.client_key)]):
            pass
