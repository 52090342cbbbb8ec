"""The same container on the device (real bed): every carried field of `docker inspect` matches the source,
a published port answers on the device's address with the same content, a host address the device lacks is
adjusted and recorded; what cannot move is refused by name before anything is frozen."""

from __future__ import annotations

import asyncio
import functools
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine
from androcond.protocol.emulation import MOUNT

from ..helpers import DaemonProcess
from ..testbed.bed import RUN_FILTER, TEST_LABEL, TEST_RUN
from ..testbed.device import port_open
from ..testbed.images import TEST_IMAGE
from ..testbed.proc import wait_for
from .conftest import AgentBed
from .daemon_bed import migrate_by_cli, running, write_daemon_config

pytestmark = pytest.mark.testbed

HTTPD = "mkdir -p /www && echo page-of-{name} > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"
HOST_SIDE = "10.231.7.1"  # the host's end of the device's veth: an address the device does not have


def serving(name: str, network: str, ports: dict[str, list[dict[str, str]]], **host: Any) -> dict[str, Any]:
    return {
        "Image": TEST_IMAGE, "Cmd": ["/bin/sh", "-c", HTTPD.format(name=name)],
        "Labels": {TEST_LABEL: TEST_RUN, "app": "shop"}, "Env": ["FOO=bar", "GREETING=hello world"],
        "WorkingDir": "/www", "User": "0:0", "ExposedPorts": {"8080/tcp": {}}, "StopTimeout": 7,
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": 3600 * 10**9, "Timeout": 10**9, "Retries": 2},
        "HostConfig": {"NetworkMode": network, "PortBindings": ports,
                       "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
                       "Memory": 256 * 2**20, "NanoCpus": 500_000_000, "PidsLimit": 64,
                       "CapAdd": ["NET_ADMIN"], "CapDrop": ["MKNOD"],
                       "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}],
                       "Tmpfs": {"/scratch": "size=1m"}, "ShmSize": 32 * 2**20,
                       "SecurityOpt": ["no-new-privileges"], **host},
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": ["storefront"]}}},
    }


CARRIED_CONFIG = ("Env", "WorkingDir", "User", "ExposedPorts", "StopTimeout", "Healthcheck", "Cmd", "Image")
CARRIED_HOST = ("RestartPolicy", "Memory", "NanoCpus", "PidsLimit", "CapAdd", "CapDrop", "Ulimits", "Tmpfs",
                "ShmSize", "SecurityOpt", "NetworkMode", "LogConfig")


def page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode().strip())


def serves(url: str, expected: str) -> bool:
    """Readiness is the page itself: docker-proxy accepts on the host port before httpd listens behind it."""
    try:
        return page(url) == expected
    except OSError:
        return False


@pytest.fixture
def network(agent_server: AgentBed) -> Any:
    name = f"acd-net-{uuid.uuid4().hex[:8]}"
    agent_server.bed.engine_a.cli("network", "create", "--driver", "bridge", name)
    yield name
    for engine in (agent_server.bed.engine_a, agent_server.bed.engine_b):
        engine.remove_containers(RUN_FILTER)
        engine.cli("network", "rm", name, check=False)


async def test_carried_configuration_matches_and_the_port_answers_on_the_device(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        network: str) -> None:
    bed = agent_server.bed
    port, pinned = 18000 + int(TEST_RUN, 16) % 500, 18600 + int(TEST_RUN, 16) % 500
    ports = {"8080/tcp": [{"HostIp": "", "HostPort": str(port)}, {"HostIp": HOST_SIDE, "HostPort": str(pinned)}]}
    cid = await engine_a.create_container(serving(unique_name, network, ports), name=unique_name)
    await engine_a.start_container(cid)
    expected_page = f"page-of-{unique_name}"
    await asyncio.to_thread(wait_for, lambda: serves(f"http://127.0.0.1:{port}/", expected_page), timeout=30,
                            what="the page on the published port")
    source = await engine_a.inspect_container(cid)
    config = write_daemon_config(agent_server, tmp_path)
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        code, record = await migrate_by_cli(config, unique_name)
        assert code == 0 and record["state"] == "done", record
        moved = await engine_b.inspect_container(unique_name)
        for key in CARRIED_CONFIG:
            assert moved["Config"][key] == source["Config"][key], key
        assert moved["Config"]["Labels"]["app"] == "shop"
        assert not any(k.startswith("androcond.") for k in moved["Config"]["Labels"])
        for key in CARRIED_HOST:
            assert moved["HostConfig"][key] == source["HostConfig"][key], key
        assert moved["HostConfig"]["PortBindings"] == {
            "8080/tcp": [{"HostIp": "", "HostPort": str(port)}, {"HostIp": "", "HostPort": str(pinned)}]}
        assert "storefront" in moved["NetworkSettings"]["Networks"][network]["Aliases"]
        # The device lacked the host's address: adjusted, logged, recorded.
        change = record["adjusted"]["HostConfig.PortBindings.8080/tcp"]
        assert change["from"] == f"{HOST_SIDE}:{pinned}" and change["to"] == f"0.0.0.0:{pinned}"
        assert any(e.get("msg") == "configuration adjusted" and e.get("field") == "HostConfig.PortBindings.8080/tcp"
                   for e in daemon.lines)
        # Published on the device's address, the same page.
        device_ip = bed.device.device_ip
        for url in (f"http://{device_ip}:{port}/", f"http://{device_ip}:{pinned}/"):
            await asyncio.to_thread(wait_for, functools.partial(serves, url, expected_page), timeout=30,
                                    what=f"the page at {url}")
        assert not await running(engine_a, unique_name)
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()


async def test_what_cannot_move_is_refused_by_name_before_the_freeze(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        network: str) -> None:
    bed = agent_server.bed
    taken = 18300 + int(TEST_RUN, 16) % 200
    # Something on the device already publishes `taken`.
    holder = await engine_b.create_container(
        {"Image": TEST_IMAGE, "Cmd": ["/bin/busybox", "httpd", "-f", "-p", "8080"], "Labels": {TEST_LABEL: TEST_RUN},
         "ExposedPorts": {"8080/tcp": {}},
         "HostConfig": {"PortBindings": {"8080/tcp": [{"HostPort": str(taken)}]}}}, name=f"{unique_name}-holder")
    await engine_b.start_container(holder)
    await asyncio.to_thread(wait_for, lambda: port_open(bed.device.device_ip, taken), timeout=30,
                            what="the device's own container on its port")
    cases: dict[str, tuple[dict[str, Any], str]] = {
        f"{unique_name}-dev": ({"Devices": [{"PathOnHost": "/dev/zero", "PathInContainer": "/dev/zz",
                                             "CgroupPermissions": "rwm"}]}, "HostConfig.Devices"),
        f"{unique_name}-pid": ({"PidMode": "host"}, "HostConfig.PidMode"),
        # (--privileged is refused the same way, tests/fast/test_container_config.py: this sandbox cannot run
        # a privileged container at the source to begin with.)
        f"{unique_name}-port": ({"PortBindings": {"8080/tcp": [{"HostPort": str(taken)}]}},
                                f"host port {taken}/tcp"),
        # As a container rebuilt by androcond's restorer whose directory could not be unmounted after: its
        # checkpoint could not be restored anywhere (its engine does not know that mount).
        f"{unique_name}-restorer": ({"Tmpfs": {MOUNT: ""}}, f"its directory is still mounted at {MOUNT}"),
    }
    for name, (host, _) in cases.items():
        body = serving(name, network, {})
        body["HostConfig"] = {"NetworkMode": network, **host}
        await engine_a.start_container(await engine_a.create_container(body, name=name))
    config = write_daemon_config(agent_server, tmp_path)
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        for name, (_, named) in cases.items():
            code, record = await migrate_by_cli(config, name)
            assert code == 1 and record["state"] == "rejected", record
            assert named in record["error"], record["error"]
            assert await running(engine_a, name), f"{name} stopped at the source"
        assert not any(e.get("state") == "checkpointing" for e in daemon.lines), "something was frozen"
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
