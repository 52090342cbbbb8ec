"""Fitting the daemon's create body to this device: what only the device can know.

A host port already taken here refuses the migration (at Begin, before the source is frozen); a host address
this device lacks, a log driver or runtime its engine does not have are adjusted and reported back; a
user-defined network the container was on is created here when missing (same name and driver).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engine import Engine, EngineError
from ..logging import get_logger
from ..protocol.codes import ErrorCode
from ..protocol.create_body import PRIVATE_KEY
from .errors import AgentError, RestoreError

log = get_logger(__name__)

ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - the wildcard, as Docker writes it


class PortTaken(AgentError):
    code = ErrorCode.REFUSED


@dataclass
class Fitted:
    body: dict[str, Any]
    adjusted: dict[str, dict[str, Any]] = field(default_factory=dict)
    restart_policy: dict[str, Any] | None = None  # applied once the restore succeeded


def fit_ports(bindings: Mapping[str, Any], local_addresses: Iterable[str],
              port_free: Callable[[str, int, str], bool]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Port bindings as this device can honour them. Pure but for `port_free` (tried by the caller)."""
    local = set(local_addresses)
    fitted: dict[str, Any] = {}
    adjusted: dict[str, dict[str, Any]] = {}
    for spec, binds in bindings.items():
        proto = spec.partition("/")[2] or "tcp"
        out = []
        for bind in binds or []:
            host_ip = str(bind.get("HostIp") or "")
            host_port = str(bind.get("HostPort") or "")
            if host_ip not in ANY_ADDRESS and host_ip not in local:
                adjusted[f"HostConfig.PortBindings.{spec}"] = {
                    "from": f"{host_ip}:{host_port}", "to": f"0.0.0.0:{host_port}",
                    "why": f"the device has no address {host_ip}: published on all its addresses"}
                host_ip = ""
            if host_port and not port_free(host_ip, int(host_port), proto):
                raise PortTaken(f"host port {host_port}/{proto} ({spec}) is already taken on the device")
            out.append({"HostIp": host_ip, "HostPort": host_port})
        fitted[spec] = out
    return fitted, adjusted


def port_free(host_ip: str, port: int, proto: str) -> bool:
    """Whether this device could publish `port` now (tried by binding it, then letting go at once)."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    with socket.socket(family, kind) as probe:
        # As the engine's own listener does: connections of an earlier server on the port, closing (TIME_WAIT),
        # do not keep it from listening there; a socket that listens does.
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host_ip or "0.0.0.0", port))  # noqa: S104 - Docker publishes on all addresses
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def local_addresses() -> set[str]:
    """The device's own addresses (IPv4 and IPv6), from the kernel's tables."""
    addresses = {"127.0.0.1", "::1"}
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                raw = line.split()[0]
                addresses.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(raw)))
    except OSError:
        pass
    addresses |= _ipv4_addresses()
    return addresses


def _ipv4_addresses() -> set[str]:
    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for previous, line in itertools.pairwise(lines):
        if "/32 host LOCAL" in line:
            found.add(previous.split()[-1])
    return found


async def fit(engine: Engine, body: dict[str, Any]) -> Fitted:
    """Fit a create body to this device (network creation included); raise PortTaken or RestoreError."""
    body = dict(body)
    private: dict[str, Any] = body.pop(PRIVATE_KEY, None) or {}
    fitted = Fitted(body, restart_policy=private.get("restart_policy"))
    host: dict[str, Any] = dict(body.get("HostConfig") or {})
    body["HostConfig"] = host
    try:
        info = await engine.info()
    except EngineError as exc:
        raise RestoreError(f"the device engine did not answer: {exc}") from exc
    if host.get("PortBindings"):
        addresses = await asyncio.to_thread(local_addresses)
        host["PortBindings"], adjusted = await asyncio.to_thread(fit_ports, host["PortBindings"], addresses,
                                                                  port_free)
        fitted.adjusted.update(adjusted)
    log_type = (host.get("LogConfig") or {}).get("Type")
    drivers = set(((info.get("Plugins") or {}).get("Log")) or [])
    if log_type and log_type not in drivers:
        fitted.adjusted["HostConfig.LogConfig"] = {"from": host.pop("LogConfig"), "to": None,
                                                   "why": f"the device engine has no {log_type!r} log driver: "
                                                          "its default is used"}
    runtime = host.get("Runtime")
    if runtime and runtime not in (info.get("Runtimes") or {}):
        fitted.adjusted["HostConfig.Runtime"] = {"from": host.pop("Runtime"), "to": None,
                                                 "why": f"the device engine has no {runtime!r} runtime"}
    for network in private.get("networks") or []:
        await _ensure_network(engine, str(network["name"]), str(network.get("driver") or "bridge"))
    return fitted


async def _ensure_network(engine: Engine, name: str, driver: str) -> None:
    try:
        existing = await engine.inspect_network(name)
    except EngineError as exc:
        if exc.status != 404:
            raise RestoreError(f"network {name!r} on the device: {exc}") from exc
    else:
        if existing.get("Driver") != driver:
            raise RestoreError(f"network {name!r} exists on the device with driver {existing.get('Driver')!r}, "
                               f"the container's uses {driver!r}")
        return
    try:
        await engine.create_network(name, driver)
    except EngineError as exc:
        raise RestoreError(f"creating network {name!r} ({driver}) on the device failed: {exc}") from exc
    log.info("created a network the container needs", network=name, driver=driver)
