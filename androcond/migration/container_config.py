"""The same container on the device: every field of the source's `Config` and `HostConfig` is carried to the
device's create call, refused in preflight (with the reason, nothing frozen), or adjusted (with a log line
and an entry in the migration record) — decided in one table, :data:`CONFIG` and :data:`HOST_CONFIG`.

Pure: the daemon builds the device's create body here from `docker inspect`; what only the device can know
(a host port already taken there, an address it lacks, a log driver it has no plugin for) the agent checks
and adjusts on its side, and reports back.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..errors import AndrocondError
from ..protocol.create_body import PRIVATE_KEY

# Networks every engine has: the container joins the device's own.
BUILTIN_NETWORKS = frozenset({"default", "bridge", "none"})
# A field no row decides (a newer engine's): refused, so that it can never be dropped without a word.
UNKNOWN = "a field androcond does not know: refused rather than dropped silently (see docs/container-config.md)"


class Class(StrEnum):
    CARRIED = "carried"    # passed to the device's create call as it is (or as the row's function shapes it)
    REFUSED = "refused"    # when set: preflight refuses, nothing is frozen
    ADJUSTED = "adjusted"  # changed or left out on the way, said in the log and the migration record


class ConfigRefused(AndrocondError):
    """A field the device cannot honour: the migration is refused before anything is frozen."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class Rule:
    cls: Class
    why: str = ""


C, R, A = Class.CARRIED, Class.REFUSED, Class.ADJUSTED

# Config: https://docs.docker.com/engine/api/v1.41/#operation/ContainerCreate
CONFIG: dict[str, Rule] = {
    "Image": Rule(C), "Cmd": Rule(C), "Entrypoint": Rule(C), "Env": Rule(C), "WorkingDir": Rule(C),
    "User": Rule(C), "Tty": Rule(C), "OpenStdin": Rule(C), "StdinOnce": Rule(C), "AttachStdin": Rule(C),
    "AttachStdout": Rule(C), "AttachStderr": Rule(C), "StopSignal": Rule(C), "StopTimeout": Rule(C),
    "Hostname": Rule(C), "Domainname": Rule(C), "ExposedPorts": Rule(C), "Healthcheck": Rule(C),
    "Shell": Rule(C), "ArgsEscaped": Rule(C), "MacAddress": Rule(C), "NetworkDisabled": Rule(C),
    "Labels": Rule(C, "without androcond.* labels: the container must not migrate again from the device"),
    "Volumes": Rule(C, "the image's anonymous volumes; their data travels as volumes"),
    "OnBuild": Rule(C, "the image's build triggers, as the engine reports them"),
}

# HostConfig: the same reference.
HOST_CONFIG: dict[str, Rule] = {
    # resources and limits
    **{name: Rule(C) for name in (
        "Memory", "MemoryReservation", "MemorySwap", "MemorySwappiness", "KernelMemory", "KernelMemoryTCP",
        "NanoCpus", "CpuShares", "CpuPeriod", "CpuQuota", "CpuRealtimePeriod", "CpuRealtimeRuntime",
        "CpusetCpus", "CpusetMems", "CpuCount", "CpuPercent", "PidsLimit", "Ulimits", "OomKillDisable",
        "OomScoreAdj", "BlkioWeight", "ShmSize", "IOMaximumIOps", "IOMaximumBandwidth")},
    # security, identity, environment of the process
    **{name: Rule(C) for name in (
        "CapAdd", "CapDrop", "SecurityOpt", "GroupAdd", "ReadonlyRootfs", "Sysctls", "Init", "Tmpfs",
        "Dns", "DnsOptions", "DnsSearch", "ExtraHosts", "PublishAllPorts", "AutoRemove", "UsernsMode",
        "CgroupnsMode", "StorageOpt", "Isolation")},
    "PortBindings": Rule(C, "a host port taken on the device is refused; a host IP the device lacks is "
                            "adjusted to all its addresses"),
    "RestartPolicy": Rule(C, "applied once the restore succeeded, so a failed restore is never restarted "
                             "fresh (that would run the container twice)"),
    "LogConfig": Rule(C, "adjusted to the device engine's default driver when it has no such driver"),
    "NetworkMode": Rule(C, "bridge, none and user-defined networks (created on the device when missing, "
                           "same name and driver, with the aliases); host and container:<id> are refused"),
    "Runtime": Rule(C, "adjusted to the device engine's default when it lacks that runtime"),
    "Mounts": Rule(C, "named volumes and tmpfs; a bind mount is refused"),
    "Binds": Rule(R, "a bind mount's data lives on this host; use a named volume"),
    "Devices": Rule(R, "a host device cannot move with the container"),
    "DeviceCgroupRules": Rule(R, "rules for host devices cannot move with the container"),
    "DeviceRequests": Rule(R, "a host device (GPU) cannot move with the container"),
    "BlkioWeightDevice": Rule(R, "names a block device of this host"),
    "BlkioDeviceReadBps": Rule(R, "names a block device of this host"),
    "BlkioDeviceWriteBps": Rule(R, "names a block device of this host"),
    "BlkioDeviceReadIOps": Rule(R, "names a block device of this host"),
    "BlkioDeviceWriteIOps": Rule(R, "names a block device of this host"),
    "PidMode": Rule(R, "the host's or another container's PID namespace is not on the device"),
    "IpcMode": Rule(R, "the host's or another container's IPC namespace is not on the device"),
    "UTSMode": Rule(R, "the host's UTS namespace is not on the device"),
    "Privileged": Rule(R, "refused unless the device's config says allow_privileged = true"),
    "VolumesFrom": Rule(R, "the other container's volumes are not on the device"),
    "Links": Rule(R, "the linked containers are not on the device; use a user-defined network"),
    "VolumeDriver": Rule(R, "a volume plugin of this host"),
    "ContainerIDFile": Rule(A, "a path on this host: left out"),
    "CgroupParent": Rule(A, "a cgroup of this host: left out (the device engine's default)"),
    "Cgroup": Rule(A, "another container's cgroup: left out"),
    "ConsoleSize": Rule(C, "the terminal's size"),
    "MaskedPaths": Rule(C, "the paths hidden from the container, as on the source"),
    "ReadonlyPaths": Rule(C, "the paths read-only in the container, as on the source"),
}


def _set(value: Any) -> bool:
    """Docker reports unset fields as null, "", 0, false, [] or {}."""
    return value not in (None, "", 0, False, [], {})


@dataclass
class TargetPlan:
    """The device's create body and what was changed on the way."""

    body: dict[str, Any]
    adjusted: dict[str, dict[str, Any]] = field(default_factory=dict)  # field → {"from": …, "to": …}


Refusal = Callable[[Any], str | None]


def _namespace_mode(kind: str) -> Refusal:
    def check(value: Any) -> str | None:
        text = str(value or "")
        if text == "host" or text.startswith("container:"):
            return f"{kind} mode {text!r}: " + HOST_CONFIG[kind].why
        return None

    return check


_REFUSALS: dict[str, Refusal] = {
    "PidMode": _namespace_mode("PidMode"),
    "IpcMode": _namespace_mode("IpcMode"),
    "UTSMode": lambda v: "UTSMode 'host': " + HOST_CONFIG["UTSMode"].why if v == "host" else None,
}


def plan(inspect: Mapping[str, Any], *, allow_privileged: bool = False,
         network_drivers: Mapping[str, str] | None = None) -> TargetPlan:
    """The device's create body from the source's inspect, or ConfigRefused naming the first field that
    cannot move (a field unknown to the table included)."""
    cfg: Mapping[str, Any] = inspect.get("Config") or {}
    host: Mapping[str, Any] = inspect.get("HostConfig") or {}
    if not cfg.get("Image"):
        raise ConfigRefused("Config.Image", "the engine did not say which image the container runs")
    adjusted: dict[str, dict[str, Any]] = {}
    body: dict[str, Any] = {}
    for name, value in cfg.items():
        rule = CONFIG.get(name)
        if rule is None:
            if _set(value):
                raise ConfigRefused(f"Config.{name}", UNKNOWN)
            continue
        if _set(value):
            body[name] = value
    if "Labels" in body:
        body["Labels"] = {k: v for k, v in body["Labels"].items() if not k.startswith("androcond.")}
    hc: dict[str, Any] = {}
    for name, value in host.items():
        rule = HOST_CONFIG.get(name)
        if rule is None:
            if _set(value):
                raise ConfigRefused(f"HostConfig.{name}", UNKNOWN)
            continue
        if not _set(value):
            continue
        if name == "Privileged":
            if not allow_privileged:
                raise ConfigRefused("HostConfig.Privileged", rule.why)
            hc[name] = value
        elif name in _REFUSALS:
            reason = _REFUSALS[name](value)
            if reason is not None:
                raise ConfigRefused(f"HostConfig.{name}", reason)
            hc[name] = value  # a private or shareable namespace of its own moves with it
        elif rule.cls == Class.REFUSED:
            raise ConfigRefused(f"HostConfig.{name}", f"{value!r}: {rule.why}")
        elif rule.cls == Class.ADJUSTED:
            adjusted[f"HostConfig.{name}"] = {"from": value, "to": None, "why": rule.why}
        elif name in ("Mounts", "NetworkMode", "RestartPolicy"):
            continue  # shaped below
        else:
            hc[name] = value
    hc["Mounts"] = _mounts(inspect)
    private: dict[str, Any] = {}
    restart = host.get("RestartPolicy") or {}
    if restart.get("Name") not in (None, "", "no"):
        private["restart_policy"] = restart  # the agent applies it after the restore
    networks = _networks(inspect, host, hc, private, network_drivers or {})
    body["HostConfig"] = hc
    if networks:
        body["NetworkingConfig"] = {"EndpointsConfig": networks}
    if private:
        body[PRIVATE_KEY] = private
    return TargetPlan(body, adjusted)


def home_body(target: TargetPlan, inspect: Mapping[str, Any]) -> dict[str, Any]:
    """The create body that makes the container again as it was at home: the target's body with every field
    adjusted on the way out given its value back, and its own labels (androcond's included)."""
    body = copy.deepcopy(target.body)
    host = body.setdefault("HostConfig", {})
    for name, change in target.adjusted.items():
        if "from" not in change:
            continue
        section, _, key = name.rpartition(".")
        where = host if section == "HostConfig" else body if not section else None
        if where is None:
            continue
        if _set(change["from"]):
            where[key] = change["from"]
        else:
            where.pop(key, None)
    labels = (inspect.get("Config") or {}).get("Labels")
    if labels:
        body["Labels"] = dict(labels)
    return body


def _mounts(inspect: Mapping[str, Any]) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = []
    for m in inspect.get("Mounts") or []:
        kind = m.get("Type")
        if kind == "bind":
            raise ConfigRefused("Mounts", f"bind mount {m.get('Source', '?')}: " + HOST_CONFIG["Binds"].why)
        if kind == "volume" and m.get("Name"):
            mounts.append({"Type": "volume", "Source": m["Name"], "Target": m["Destination"],
                           "ReadOnly": not m.get("RW", True)})
    # tmpfs mounts made with --mount (not --tmpfs, which is HostConfig.Tmpfs) appear only in HostConfig.Mounts.
    for m in (inspect.get("HostConfig") or {}).get("Mounts") or []:
        if m.get("Type") == "tmpfs":
            mounts.append(m)
    return mounts


def _networks(inspect: Mapping[str, Any], host: Mapping[str, Any], hc: dict[str, Any], private: dict[str, Any],
              drivers: Mapping[str, str]) -> dict[str, Any]:
    mode = str(host.get("NetworkMode") or "default")
    if mode == "host" or mode.startswith("container:"):
        raise ConfigRefused("HostConfig.NetworkMode", f"{mode!r}: " + HOST_CONFIG["NetworkMode"].why)
    hc["NetworkMode"] = mode
    attached: Mapping[str, Any] = (inspect.get("NetworkSettings") or {}).get("Networks") or {}
    endpoints: dict[str, Any] = {}
    create: list[dict[str, str]] = []
    for name, endpoint in attached.items():
        if name in BUILTIN_NETWORKS:
            continue
        # Docker adds the short container id as an alias of its own; the device's container gets its own.
        own = {str(inspect.get("Id", ""))[:12]}
        aliases = [a for a in (endpoint or {}).get("Aliases") or [] if a not in own]
        endpoints[name] = {"Aliases": aliases} if aliases else {}
        create.append({"name": name, "driver": drivers.get(name, "bridge")})
    if create:
        private["networks"] = create
    return endpoints
