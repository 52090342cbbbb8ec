"""Configured devices: how each is reached (adb forward or address), and what it is (probe).

Host keys of a device reached through adb are looked up in known_hosts under its adb serial (the forward's
local port changes every time); a device reached by address under `[host]:port` as usual.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from ..aio import complete
from ..build import build_version
from ..config import DeviceSettings
from ..criu import compat as criu_compat
from ..errors import AndrocondError
from ..faults import NO_FAULTS, Faults
from ..logging import get_logger
from .adb import AdbClient, AdbError
from .ssh import Endpoint, PhaseTimeouts, TransportError
from .transport import AgentConnection

log = get_logger(__name__)
PROBE_TIMEOUTS = PhaseTimeouts(connect=10.0, hello=10.0)


class DeviceError(AndrocondError):
    pass


@asynccontextmanager
async def agent_endpoint(device: DeviceSettings, adb: AdbClient,
                         faults: Faults = NO_FAULTS) -> AsyncIterator[Endpoint]:
    """The agent's ssh endpoint for as long as the block runs (an adb forward is removed afterwards)."""
    if device.identity is None or device.known_hosts is None:
        raise DeviceError(f"device {device.name}: identity and known_hosts are needed to reach its agent")
    if device.adb_serial is not None:
        port = await adb.forward(device.adb_serial, device.agent_port)
        try:
            yield Endpoint("127.0.0.1", port, device.user, device.identity, device.known_hosts,
                           device.agent_command, host_key_alias=device.adb_serial)
        finally:
            if faults.armed("forward-gone"):  # test bed only: the forward vanished under us
                await adb.killforward(device.adb_serial, port)
            await _remove_forward(adb, device.adb_serial, port)
        return
    assert device.address is not None
    yield Endpoint(device.address.host, device.address.port, device.user, device.identity, device.known_hosts,
                   device.agent_command)


async def _remove_forward(adb: AdbClient, serial: str, port: int) -> None:
    """Best effort: a phone unplugged right after the restore must not turn a finished migration into a
    failure. A forward left behind is harmless (adb drops it with the device) and is logged."""
    try:
        await complete(adb.killforward(serial, port))  # to its end even if the caller is cancelled meanwhile
    except AdbError as exc:
        log.warning("could not remove the adb forward", adb_serial=serial, port=port, error=str(exc))


@dataclass(frozen=True)
class DeviceStatus:
    name: str
    reached_by: str
    reachable: bool
    adb_state: str = ""
    isa: str = ""
    agent_version: str = ""
    agent_current: bool | None = None  # its agent is this daemon's build (None: not reached); setup upgrades it
    engine_version: str = ""
    kernel: str = ""
    criu_version: str = ""
    criu_dumps_sockets: bool | None = None  # None: not reached, so not known
    fast_restore: bool | None = None  # its engine has androcond's runtime (restores read images in place)
    post_copy: bool | None = None  # it can restore lazily (runtime and userfaultfd); its `lazy` setting decides
    lazy: str = "false"  # that setting: "true", "false" or "auto"
    va_bits: int = 0  # user address bits its kernel gives a process (0: not known)
    # Bytes of its kernel's vdso and of the vvar area before it: what a cross-ISA recode lays out for it.
    vdso_size: int = 0
    vvar_size: int = 0
    # Can it take a move from this host across ISAs (Popcorn-style recode), given its ISA and address space?
    cross_isa: bool | None = None
    # Can it run this host's x86_64 containers emulated (its static qemu-x86_64, enough address bits)? None when
    # not reached or of this host's ISA.
    emulation: bool | None = None
    emulate: str = "auto"  # its `emulate` setting: "true", "false" or "auto"
    emulator: str = ""  # the path of its static qemu-x86_64 ("": none)
    emulator_version: str = ""
    # binfmt_misc runs x86_64 programs there through a static qemu (`docker exec` into an emulated container):
    # None when not reached.
    binfmt_x86_64: bool | None = None
    # Options this host's dumps carry that its restores lack (CRIU would refuse every move): None when not reached.
    criu_options_missing: list[str] | None = None
    codecs: list[str] | None = None  # compression codecs its agent has (None: not reached)
    compression: str = ""  # what a link to it compresses with, given its `compress` setting ("none": nothing)
    error: str = ""

    def as_json(self) -> dict[str, object]:
        return asdict(self)


async def probe(device: DeviceSettings, adb: AdbClient) -> DeviceStatus:
    reached_by = f"adb {device.adb_serial}" if device.adb_serial else f"ssh {device.address}"
    adb_state = ""
    if device.adb_serial is not None:
        try:
            states = {d.serial: d.state for d in await adb.devices()}
        except AdbError as exc:
            return DeviceStatus(device.name, reached_by, False, error=str(exc))
        adb_state = states.get(device.adb_serial, "absent")
        if adb_state != "device":
            return DeviceStatus(device.name, reached_by, False, adb_state, error=f"adb state: {adb_state}")
    try:
        async with agent_endpoint(device, adb) as endpoint, \
                await AgentConnection.open(endpoint, PROBE_TIMEOUTS, compress=device.compress) as link:
            hello, codec = link.hello, link.codec
    except (TransportError, AdbError, DeviceError) as exc:
        return DeviceStatus(device.name, reached_by, False, adb_state, error=str(exc))
    here = await asyncio.to_thread(criu_compat.runc_options)
    ours = await asyncio.to_thread(build_version)
    return DeviceStatus(
        device.name, reached_by, True, adb_state, isa=hello.isa, agent_version=hello.agent_version,
        agent_current=hello.agent_version == ours,
        engine_version=hello.engine_version, kernel=hello.kernel_release, criu_version=hello.criu_version,
        criu_dumps_sockets=criu_compat.dumps_inet_sockets(hello.criu_version, hello.kernel_release),
        fast_restore=hello.androcond_runtime, va_bits=hello.va_bits, vdso_size=len(hello.vdso),
        vvar_size=hello.vvar_size, cross_isa=_cross_isa(hello.isa, hello.va_bits),
        criu_options_missing=criu_compat.restore_needs(here, list(hello.criu_runc_options)),
        post_copy=hello.lazy_pages, lazy=device.lazy,
        emulation=emulation(hello.isa, hello.emulator, hello.va_bits), emulate=device.emulate,
        emulator=hello.emulator, emulator_version=hello.emulator_version, binfmt_x86_64=hello.binfmt_x86_64,
        codecs=list(hello.codecs), compression=codec)


# What the recoder can do (androcond/recoder): x86_64 processes recoded to aarch64. An x86_64 process's stack
# sits just below 2^47: the device's kernel must give at least that many address bits.
CROSS_ISA_FROM = {"x86_64": "aarch64"}
X86_64_VA_BITS = 47


def _cross_isa(device_isa: str, va_bits: int) -> bool | None:
    host = platform.machine()
    if device_isa == host:
        return None  # same ISA: no recode needed
    return CROSS_ISA_FROM.get(host) == device_isa and (va_bits == 0 or va_bits >= X86_64_VA_BITS)


# An emulated x86_64 process keeps its addresses (qemu's guest_base is 0) and qemu's own memory lies above 2^47
# (EMULATION.md, "What differs on arm64"): the device's kernel must give 48 address bits.
EMULATION_FROM = {"x86_64": "aarch64"}
EMULATION_VA_BITS = 48


def emulation(device_isa: str, emulator: str, va_bits: int, host: str | None = None) -> bool | None:
    """Can a device with these hello facts run x86_64 containers of `host` (this machine) emulated?"""
    host = host or platform.machine()
    if device_isa == host:
        return None  # same ISA: the container runs natively
    return (EMULATION_FROM.get(host) == device_isa and bool(emulator)
            and (va_bits == 0 or va_bits >= EMULATION_VA_BITS))


async def probe_all(devices: list[DeviceSettings], adb: AdbClient) -> list[DeviceStatus]:
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(probe(device, adb)) for device in devices]
    return [task.result() for task in tasks]
