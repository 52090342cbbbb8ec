"""Containers that serve something move (real bed, CRIU 4.2 on a kernel >= 6.16): a busybox httpd with a
client connection held open is checkpointed, its listening socket answers on the device, the held connection
is closed (tcp-close) rather than failing the move. A device whose CRIU cannot handle sockets on its kernel is
refused before anything is frozen."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest

from androcond.criu import compat as criu_compat
from androcond.criu.compat import task_tree
from androcond.engine import Engine

from ..helpers import DaemonProcess, counter_config
from ..testbed.bed import RUN_FILTER, TEST_LABEL, TEST_RUN
from ..testbed.device import port_open
from ..testbed.engines import DOCKER_CLI
from ..testbed.images import TEST_IMAGE
from ..testbed.proc import run, wait_for
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import faulty_agent, migrate_by_cli, running, write_daemon_config

pytestmark = pytest.mark.testbed

PORT = 8080


async def start_httpd(engine: Engine, name: str) -> str:
    """A busybox httpd on PORT serving a page that names the container; returns its address on engine A."""
    script = (f"mkdir -p /www && echo hello-from-{name} > /www/index.html && "
              f"exec /bin/busybox httpd -f -p {PORT} -h /www")
    cid = await engine.create_container({"Image": TEST_IMAGE, "Cmd": ["/bin/sh", "-c", script],
                                         "Labels": {TEST_LABEL: TEST_RUN}}, name=name)
    await engine.start_container(cid)
    inspect = await engine.inspect_container(cid)
    address = str(inspect["NetworkSettings"]["IPAddress"])
    await asyncio.to_thread(wait_for, lambda: port_open(address, PORT), timeout=30, what=f"httpd on {address}:{PORT}")
    return address


def fetch_inside(engine_host: str, name: str) -> str:
    """The page, fetched from inside the container's own network namespace on that engine."""
    out = run([DOCKER_CLI, "-H", engine_host, "exec", name, "wget", "-qO-", f"http://127.0.0.1:{PORT}/"])
    return out.stdout.decode().strip()


async def test_a_serving_container_with_a_client_connected_moves(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    bed = agent_server.bed
    address = await start_httpd(engine_a, unique_name)
    # A client mid-request: httpd holds an established connection while it waits for the rest.
    held = socket.create_connection((address, PORT), timeout=5)
    held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    inspect = await engine_a.inspect_container(unique_name)
    pids = task_tree(int(inspect["State"]["Pid"]))
    assert criu_compat.inet_sockets(pids) >= 2, "the listener and the held connection"
    config = write_daemon_config(agent_server, tmp_path)
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        code, record = await migrate_by_cli(config, unique_name)
        assert code == 0 and record["state"] == "done", record
        assert not await running(engine_a, unique_name)
        assert await running(engine_b, unique_name)
        # The listening socket was restored: the same page, served on the device.
        assert fetch_inside(bed.engine_b.host, unique_name) == f"hello-from-{unique_name}"
        assert await daemon.stop() == 0
    finally:
        held.close()
        await daemon.kill()
        bed.engine_a.remove_containers(RUN_FILTER)
        bed.engine_b.remove_containers(RUN_FILTER)


async def test_a_device_whose_criu_cannot_move_sockets_is_refused_before_the_freeze(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    if criu_compat.dumps_inet_sockets("4.1.1", criu_compat.kernel_release()):
        pytest.skip("this kernel is older than 6.16: CRIU 4.1.1 handles sockets here")
    bed = agent_server.bed
    agent = faulty_agent(agent_server, "old-criu", AGENT_PORT + 21, tmp_path)
    address = await start_httpd(engine_a, unique_name)
    config = write_daemon_config(agent_server, tmp_path, port=agent.port)
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        code, record = await migrate_by_cli(config, unique_name)
        assert code == 1 and record["state"] == "rejected", record
        error = str(record["error"])
        assert "device pixel's CRIU 4.1.1 cannot checkpoint network sockets" in error and "criu#2705" in error
        assert not any(e.get("state") == "checkpointing" for e in daemon.lines), "frozen before refusing"
        assert await running(engine_a, unique_name) and await asyncio.to_thread(port_open, address, PORT)
        assert not await running(engine_b, unique_name)
        devices = run([sys.executable, "-m", "androcond", "devices", "--json", "--config", str(config)])
        pixel = json.loads(devices.stdout)["devices"][0]
        assert pixel["criu_version"] == "4.1.1" and pixel["criu_dumps_sockets"] is False
    finally:
        await daemon.kill()
        agent.stop()
        bed.engine_a.remove_containers(RUN_FILTER)


async def test_a_device_that_would_restore_without_tcp_close_is_refused_before_the_freeze(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """This host dumps with tcp-close (its runc.conf); CRIU refuses to restore such a dump without it."""
    assert "tcp-close" in criu_compat.runc_options(), "scripts/install-system.sh writes it"
    agent = faulty_agent(agent_server, "no-tcp-close", AGENT_PORT + 22, tmp_path)
    config = write_daemon_config(agent_server, tmp_path, port=agent.port)
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        await engine_a.start_container(await engine_a.create_container(counter_config(), name=unique_name))
        code, record = await migrate_by_cli(config, unique_name)
        assert code == 1 and record["state"] == "rejected", record
        assert "add tcp-close to /etc/criu/runc.conf on the device" in str(record["error"])
        assert not any(e.get("state") == "checkpointing" for e in daemon.lines), "frozen before refusing"
        assert await running(engine_a, unique_name) and not await running(engine_b, unique_name)
        devices = run([sys.executable, "-m", "androcond", "devices", "--json", "--config", str(config)])
        assert json.loads(devices.stdout)["devices"][0]["criu_options_missing"] == ["tcp-close"]
    finally:
        await daemon.kill()
        agent.stop()
