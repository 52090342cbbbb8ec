"""The one table that decides, for every field of Config and HostConfig, carried / refused / adjusted; the
device's create body built from a real-looking inspect; and the device's own fitting of port bindings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from androcond.agent.fit import PortTaken, fit_ports
from androcond.migration.container_config import CONFIG, HOST_CONFIG, Class, ConfigRefused, plan
from androcond.protocol.create_body import PRIVATE_KEY

# Every field Docker 20.10 (API 1.41) reports in Config and HostConfig, as seen on the bed's engine plus those
# it leaves out when unset. A field missing from the table would be carried without a decision.
DOCKER_CONFIG_FIELDS = {
    "AttachStderr", "AttachStdin", "AttachStdout", "Cmd", "Domainname", "Entrypoint", "Env", "Hostname", "Image",
    "Labels", "OnBuild", "OpenStdin", "StdinOnce", "Tty", "User", "Volumes", "WorkingDir", "ExposedPorts",
    "Healthcheck", "StopSignal", "StopTimeout", "Shell", "MacAddress", "NetworkDisabled", "ArgsEscaped"}
DOCKER_HOST_CONFIG_FIELDS = {
    "AutoRemove", "Binds", "BlkioDeviceReadBps", "BlkioDeviceReadIOps", "BlkioDeviceWriteBps",
    "BlkioDeviceWriteIOps", "BlkioWeight", "BlkioWeightDevice", "CapAdd", "CapDrop", "Cgroup", "CgroupParent",
    "CgroupnsMode", "ConsoleSize", "ContainerIDFile", "CpuCount", "CpuPercent", "CpuPeriod", "CpuQuota",
    "CpuRealtimePeriod", "CpuRealtimeRuntime", "CpuShares", "CpusetCpus", "CpusetMems", "DeviceCgroupRules",
    "DeviceRequests", "Devices", "Dns", "DnsOptions", "DnsSearch", "ExtraHosts", "GroupAdd", "IOMaximumBandwidth",
    "IOMaximumIOps", "IpcMode", "Isolation", "KernelMemory", "KernelMemoryTCP", "Links", "LogConfig",
    "MaskedPaths", "Memory", "MemoryReservation", "MemorySwap", "MemorySwappiness", "NanoCpus", "NetworkMode",
    "OomKillDisable", "OomScoreAdj", "PidMode", "PidsLimit", "PortBindings", "Privileged", "PublishAllPorts",
    "ReadonlyPaths", "ReadonlyRootfs", "RestartPolicy", "Runtime", "SecurityOpt", "ShmSize", "UTSMode",
    "Ulimits", "UsernsMode", "VolumeDriver", "VolumesFrom", "Tmpfs", "Sysctls", "StorageOpt", "Mounts", "Init"}


def test_every_docker_field_is_decided() -> None:
    assert set(CONFIG) >= DOCKER_CONFIG_FIELDS, DOCKER_CONFIG_FIELDS - set(CONFIG)
    assert set(HOST_CONFIG) >= DOCKER_HOST_CONFIG_FIELDS, DOCKER_HOST_CONFIG_FIELDS - set(HOST_CONFIG)
    for name, rule in {**CONFIG, **HOST_CONFIG}.items():
        assert rule.cls != Class.REFUSED or rule.why, f"{name}: a refusal must say why"


def source(**host: Any) -> dict[str, Any]:
    inspect: dict[str, Any] = {
        "Id": "0123456789abcdef" * 4,
        "Config": {"Image": "web:1", "Cmd": ["httpd"], "Env": ["FOO=bar"], "WorkingDir": "/srv", "User": "www",
                   "Hostname": "0123456789ab", "Tty": False, "OnBuild": None, "ExposedPorts": {"8080/tcp": {}},
                   "Healthcheck": {"Test": ["CMD", "true"], "Interval": 1_000_000_000},
                   "StopTimeout": 3, "Labels": {"androcond.migrate": "pixel", "app": "web"}},
        "HostConfig": {"NetworkMode": "shop", "PortBindings": {"8080/tcp": [{"HostIp": "", "HostPort": "18080"}]},
                       "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}, "Memory": 512 * 2**20,
                       "NanoCpus": 500_000_000, "PidsLimit": 64, "CapAdd": ["NET_ADMIN"], "CapDrop": ["MKNOD"],
                       "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 2048}], "Tmpfs": {"/run": "size=1m"},
                       "ShmSize": 67108864, "Init": True, "SecurityOpt": ["no-new-privileges"],
                       "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}},
                       "MaskedPaths": ["/proc/kcore"], "ConsoleSize": [0, 0], "Binds": None, "Devices": [],
                       "Privileged": False, "PidMode": "", "IpcMode": "private", "ContainerIDFile": "",
                       **host},
        "Mounts": [{"Type": "volume", "Name": "data", "Source": "/v/data", "Destination": "/data", "RW": True}],
        "NetworkSettings": {"Networks": {"shop": {"Aliases": ["web", "0123456789ab"]}}},
    }
    return inspect


def test_the_create_body_carries_the_container() -> None:
    target = plan(source(), network_drivers={"shop": "bridge"})
    body = target.body
    assert body["Image"] == "web:1" and body["Env"] == ["FOO=bar"] and body["User"] == "www"
    assert body["WorkingDir"] == "/srv" and body["ExposedPorts"] == {"8080/tcp": {}}
    assert body["Healthcheck"]["Test"] == ["CMD", "true"] and body["StopTimeout"] == 3
    assert body["Labels"] == {"app": "web"}
    assert "OnBuild" not in body
    hc = body["HostConfig"]
    for name in ("PortBindings", "Memory", "NanoCpus", "PidsLimit", "CapAdd", "CapDrop", "Ulimits", "Tmpfs",
                 "ShmSize", "Init", "SecurityOpt", "LogConfig", "IpcMode"):
        assert hc[name] == source()["HostConfig"][name], name
    assert "RestartPolicy" not in hc, "a restart policy on the create would fight a failed restore"
    assert body[PRIVATE_KEY]["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert hc["MaskedPaths"] == ["/proc/kcore"]
    assert hc["NetworkMode"] == "shop"
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"shop": {"Aliases": ["web"]}}}
    assert body[PRIVATE_KEY]["networks"] == [{"name": "shop", "driver": "bridge"}]
    assert hc["Mounts"] == [{"Type": "volume", "Source": "data", "Target": "/data", "ReadOnly": False}]
    assert target.adjusted == {}


@pytest.mark.parametrize(("host", "field"), [
    ({"Devices": [{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse", "CgroupPermissions": "rwm"}]},
     "HostConfig.Devices"),
    ({"PidMode": "host"}, "HostConfig.PidMode"),
    ({"IpcMode": "host"}, "HostConfig.IpcMode"),
    ({"IpcMode": "container:abc"}, "HostConfig.IpcMode"),
    ({"Privileged": True}, "HostConfig.Privileged"),
    ({"NetworkMode": "host"}, "HostConfig.NetworkMode"),
    ({"NetworkMode": "container:abc"}, "HostConfig.NetworkMode"),
    ({"VolumesFrom": ["other"]}, "HostConfig.VolumesFrom"),
    ({"Links": ["/db:/web/db"]}, "HostConfig.Links"),
    ({"Binds": ["/srv:/srv"]}, "HostConfig.Binds"),
    ({"DeviceRequests": [{"Driver": "nvidia", "Count": -1}]}, "HostConfig.DeviceRequests"),
])
def test_refused_fields_name_themselves(host: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigRefused) as info:
        plan(source(**host))
    assert info.value.field == field
    assert field in str(info.value)


def test_privileged_moves_where_the_device_allows_it() -> None:
    assert plan(source(Privileged=True), allow_privileged=True).body["HostConfig"]["Privileged"] is True


def test_a_bind_mount_in_mounts_is_refused() -> None:
    inspect = source()
    inspect["Mounts"].append({"Type": "bind", "Source": "/etc/x", "Destination": "/x"})
    with pytest.raises(ConfigRefused, match="bind mount /etc/x"):
        plan(inspect)


def test_host_specific_fields_are_adjusted_and_said() -> None:
    target = plan(source(CgroupParent="/my.slice", ContainerIDFile="/tmp/cid"))
    assert set(target.adjusted) == {"HostConfig.CgroupParent", "HostConfig.ContainerIDFile"}
    assert target.adjusted["HostConfig.CgroupParent"]["from"] == "/my.slice"
    assert "CgroupParent" not in target.body["HostConfig"]


def test_an_unknown_field_is_refused_not_dropped() -> None:
    with pytest.raises(ConfigRefused, match=r"HostConfig\.FancyNewThing: a field androcond does not know"):
        plan(source(FancyNewThing={"x": 1}))
    inspect = source()
    inspect["Config"]["Brandnew"] = True
    with pytest.raises(ConfigRefused, match=r"Config\.Brandnew"):
        plan(inspect)
    assert plan(source(FancyNewThing=None)).body  # unset, it decides nothing


def test_the_plan_does_not_touch_the_inspect() -> None:
    inspect = source()
    before = copy.deepcopy(inspect)
    plan(inspect)
    assert inspect == before


def test_ports_on_the_device() -> None:
    bindings = {"8080/tcp": [{"HostIp": "192.0.2.7", "HostPort": "18080"}],
                "53/udp": [{"HostIp": "", "HostPort": "10053"}]}
    asked: list[tuple[str, int, str]] = []

    def free(ip: str, port: int, proto: str) -> bool:
        asked.append((ip, port, proto))
        return True

    fitted, adjusted = fit_ports(bindings, {"10.231.7.2", "127.0.0.1"}, free)
    assert fitted == {"8080/tcp": [{"HostIp": "", "HostPort": "18080"}],
                      "53/udp": [{"HostIp": "", "HostPort": "10053"}]}
    assert adjusted["HostConfig.PortBindings.8080/tcp"]["from"] == "192.0.2.7:18080"
    assert asked == [("", 18080, "tcp"), ("", 10053, "udp")]
    kept, none = fit_ports({"80/tcp": [{"HostIp": "10.231.7.2", "HostPort": "80"}]}, {"10.231.7.2"}, free)
    assert kept["80/tcp"][0]["HostIp"] == "10.231.7.2" and none == {}
    with pytest.raises(PortTaken, match="18080/tcp"):
        fit_ports(bindings, set(), lambda _ip, port, _proto: port != 18080)


def test_the_documented_table_is_the_table() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "container-config.md").read_text()
    for name, rule in {**CONFIG, **HOST_CONFIG}.items():
        assert f"| `{name}` | {rule.cls} |" in doc, f"docs/container-config.md is missing {name} ({rule.cls})"
