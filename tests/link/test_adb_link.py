"""AdbClient against the real adb server and adbd of the test bed (and, for FAIL texts the bed cannot produce
on demand, a one-shot local server speaking the same framing)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from androcond.link.adb import (
    AdbClient,
    AdbDeviceNotFound,
    AdbDeviceOffline,
    AdbDeviceUnauthorized,
    AdbFailure,
    AdbServerUnavailable,
    parse_device_list,
)

from ..testbed import TestBed

WAIT = 30.0  # upper bound for anything the bed does in well under a second


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def client(testbed: TestBed) -> AdbClient:
    return AdbClient(timeout=15)


@pytest.mark.testbed
async def test_server_version(client: AdbClient) -> None:
    assert await client.server_version() > 0


@pytest.mark.testbed
async def test_devices_lists_the_bed(client: AdbClient, testbed: TestBed) -> None:
    devices = {d.serial: d for d in await client.devices()}
    device = devices[testbed.adb_serial]
    assert device.state == "device"
    assert device.transport_id is not None


@pytest.mark.testbed
async def test_shell_returns_stdout_and_status(client: AdbClient, testbed: TestBed) -> None:
    result = await client.shell(testbed.adb_serial, "uname -m")
    assert result.text.strip() == "x86_64"
    assert result.exit_status == 0


@pytest.mark.testbed
async def test_shell_failing_command(client: AdbClient, testbed: TestBed) -> None:
    result = await client.shell(testbed.adb_serial, "echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_status) == (b"out\n", b"err\n", 3)


@pytest.mark.testbed
async def test_shell_closes_stdin(client: AdbClient, testbed: TestBed) -> None:
    # A command reading stdin must see EOF rather than hang until the timeout.
    async with asyncio.timeout(WAIT):
        result = await client.shell(testbed.adb_serial, "cat; echo done")
    assert (result.stdout, result.exit_status) == (b"done\n", 0)


@pytest.mark.testbed
async def test_forward_any_port_reaches_sshd(client: AdbClient, testbed: TestBed) -> None:
    serial = testbed.adb_serial
    port = await client.forward(serial, testbed.sshd_port)
    try:
        assert port > 0
        async with asyncio.timeout(WAIT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                banner = await reader.readline()
            finally:
                writer.close()
                await writer.wait_closed()
        assert banner.startswith(b"SSH-2.0-")
    finally:
        await client.killforward(serial, port)
    with pytest.raises(OSError):  # the forward is gone: nothing listens on its port any more
        await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.testbed
async def test_forward_fixed_port(client: AdbClient, testbed: TestBed) -> None:
    wanted = free_port()
    port = await client.forward(testbed.adb_serial, testbed.sshd_port, wanted)
    try:
        assert port == wanted
    finally:
        await client.killforward(testbed.adb_serial, port)


@pytest.mark.testbed
async def test_killforward_unknown_port_passes_the_fail_text(client: AdbClient, testbed: TestBed) -> None:
    port = free_port()
    with pytest.raises(AdbFailure) as info:
        await client.killforward(testbed.adb_serial, port)
    assert info.value.message == f"listener 'tcp:{port}' not found"
    assert info.value.message in str(info.value)


@pytest.mark.testbed
async def test_connect_failure_passes_the_text(client: AdbClient, testbed: TestBed) -> None:
    address = f"{testbed.device.host_ip}:{free_port()}"  # the host end of the veth: refused at once
    with pytest.raises(AdbFailure, match="failed to connect") as info:
        await client.connect(address)
    assert address in info.value.message


@pytest.mark.testbed
@pytest.mark.parametrize("call", ["shell", "forward", "features"])
async def test_unknown_serial(client: AdbClient, call: str) -> None:
    serial = "androcond-no-such-device"
    with pytest.raises(AdbDeviceNotFound) as info:
        if call == "shell":
            await client.shell(serial, "true")
        elif call == "forward":
            await client.forward(serial, 8022)
        else:
            await client.features(serial)
    assert serial in info.value.message


@pytest.mark.testbed
async def test_disconnect_unknown_address(client: AdbClient) -> None:
    with pytest.raises(AdbDeviceNotFound, match="no such device"):
        await client.disconnect("10.231.7.2:1")


async def test_no_server() -> None:
    port = free_port()
    with pytest.raises(AdbServerUnavailable) as info:
        await AdbClient(port=port, timeout=5).server_version()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "adb start-server" in message


@pytest.mark.testbed
async def test_start_server(testbed: TestBed) -> None:
    # A second, private server on a free port: started by the client, stopped by it.
    client = AdbClient(port=free_port(), start_server=True, timeout=30)
    assert await client.server_version() > 0
    await client.kill_server()


@pytest.mark.parametrize(("text", "kind"), [
    ("device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set", AdbDeviceUnauthorized),
    ("device offline", AdbDeviceOffline),
    ("device 'x' not found", AdbDeviceNotFound),
    ("something new", AdbFailure),
])
async def test_fail_texts_map_to_errors(text: str, kind: type[AdbFailure]) -> None:
    payload = text.encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(int(await reader.readexactly(4), 16))
        writer.write(b"FAIL%04x" % len(payload) + payload)
        await writer.drain()
        writer.close()

    # The bed cannot make its device unauthorized or offline at will: a one-shot server gives those FAILs.
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        client = AdbClient(port=server.sockets[0].getsockname()[1], timeout=5)
        with pytest.raises(AdbFailure) as info:
            await client.shell("x", "true")
    assert type(info.value) is kind
    assert info.value.message == text


def test_parse_device_list() -> None:
    text = ("emulator-5554          device product:sdk_gphone64_arm64 model:sdk_gphone64_arm64 "
            "device:emu64a transport_id:3\n"
            "0123456789ABCDEF       no permissions (missing udev rules? user is in the plugdev group); "
            "see [http://developer.android.com/tools/device.html] usb:1-1 transport_id:4\n"
            "10.0.0.2:5555          unauthorized transport_id:5\n")
    emulator, usb, network = parse_device_list(text)
    assert (emulator.serial, emulator.state, emulator.model, emulator.device, emulator.transport_id) == (
        "emulator-5554", "device", "sdk_gphone64_arm64", "emu64a", 3)
    assert (usb.state, usb.properties["usb"], usb.transport_id) == ("no permissions", "1-1", 4)
    assert "udev" in usb.state_detail
    assert (network.serial, network.state) == ("10.0.0.2:5555", "unauthorized")
