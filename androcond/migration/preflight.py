"""Preflight: refuse what cannot land, before anything is frozen, and decide everything the later phases need
(a Plan). Written against the roles: the source's facts and the target's hello."""

from __future__ import annotations

from typing import Any

from ..config import DeviceSettings
from ..criu import compat as criu_compat
from ..logging import get_logger
from ..protocol import protocol_pb2 as pb
from ..recoder import RecodeOptions, VdsoTemplate
from . import emulate
from .container_config import TargetPlan
from .errors import Rejected
from .plan import CrossIsa, Emulated, Plan, SourceFacts
from .roles import Source

log = get_logger(__name__)
# Room kept on the target beyond the estimate (CRIU work files, engine metadata).
SPACE_MARGIN = 128 * 1024 * 1024
# The pairs of ISAs a move crosses: recoded (criu-het's way, for Popcorn binaries) both ways; the way out may
# also run the container emulated.
RECODED_ISAS = (("x86_64", "aarch64"), ("aarch64", "x86_64"))
EMULATED_ISAS = (("x86_64", "aarch64"),)


async def plan(source: Source, device: DeviceSettings, inspect: dict[str, Any], hello: pb.AgentHello) -> Plan:
    # First the configuration (bind mounts, host devices, host namespaces, …): the target's create body.
    target = await source.target_plan(inspect, device)
    facts = await source.facts(inspect)
    if facts.emulated:
        return _home_from_emulation(facts, device, inspect, target, hello)
    if hello.va_bits and facts.va_bits > hello.va_bits:
        raise Rejected(f"the container's memory reaches {facts.va_bits}-bit addresses, and device {device.name}'s "
                       f"kernel gives a process {hello.va_bits} bits (CRIU restores every mapping at its address; an "
                       "Android kernel built with 39-bit addresses cannot hold an x86_64 stack)")
    cross: CrossIsa | None = None
    emulated: Emulated | None = None
    if hello.isa != facts.isa:
        way = await _across_isas(source, device, facts, hello)
        if isinstance(way, Emulated):
            emulated = way
            target = emulate.target_plan(target, way)
        else:
            cross = way
    if emulated is None:
        _target_criu_restores(facts, device, hello)
    if facts.inet_sockets:
        blocker = await source.sockets_blocker(facts.inet_sockets)
        if blocker:
            raise Rejected(blocker)
    recode = RecodeOptions(
        target=cross.target if cross else facts.isa, profile=device.profile if emulated is None else None,
        vdso=cross.vdso if cross else None,
        cgroup_v1_to_v2=hello.cgroup2 and not facts.cgroup_v2 and emulated is None, target_criu=hello.criu_version,
        absent_mounts=() if emulated else tuple(p for p in hello.absent_masked_paths if p not in facts.absent_paths))
    lazy = _lazy(facts, device, hello, emulated)
    _room(facts, hello)
    return Plan(inspect=inspect, target=target, cross=cross, emulated=emulated, recode=recode, lazy=lazy,
                estimate=facts.disk + facts.memory, flat=_flat(device, lazy, emulated))


def _room(facts: SourceFacts, hello: pb.AgentHello) -> None:
    needed = facts.disk + facts.memory + SPACE_MARGIN
    if needed > hello.free_bytes:
        raise Rejected(f"the device has {hello.free_bytes} bytes free; this container needs about "
                       f"{needed} (memory {facts.memory}, files {facts.disk})")


def _home_from_emulation(facts: SourceFacts, device: DeviceSettings, inspect: dict[str, Any], target: TargetPlan,
                         hello: pb.AgentHello) -> Plan:
    """The container runs x86_64 under its device's emulator: it goes to an x86_64 machine only, read out of the
    emulator and rebuilt there natively by androcond's restorer (no CRIU on either side, nothing to recode). What
    of it the restorer cannot rebuild (a unix socket, a pipe beyond stdio, …) the agent names in readout_blocker;
    its TCP and UDP sockets are made afresh at home."""
    where = "the container runs x86_64 under emulation on its device"
    if hello.isa != facts.isa:
        raise Rejected(f"{where}; it can go to an x86_64 machine only, and {device.name} is {hello.isa} (a move "
                       "between devices under emulation is not built)")
    if facts.readout_blocker:
        raise Rejected(f"{where}, and cannot be read out: {facts.readout_blocker}")
    if device.lazy == "true":
        raise Rejected("post-copy (lazy = true) is not possible: the way home from emulation reads every page "
                       "out before the target resumes it")
    _room(facts, hello)
    # With androcond's runtime the target starts it once with the restorer and keeps its configuration as it
    # is; without, the restorer is its entry point.
    home = target if hello.androcond_runtime else emulate.native_target_plan(target)
    return Plan(inspect=inspect, target=home, cross=None, emulated=None,
                recode=RecodeOptions(target=facts.isa), lazy=False, estimate=facts.disk + facts.memory,
                native_resume=True)


def _target_criu_restores(facts: SourceFacts, device: DeviceSettings, hello: pb.AgentHello) -> None:
    """The device's CRIU restores the images: it must take what this host's CRIU dumps."""
    lacking = criu_compat.restore_needs(list(facts.criu_options), list(hello.criu_runc_options))
    if lacking:
        raise Rejected(f"this host's CRIU dumps with {', '.join(lacking)} ({criu_compat.RUNC_CONF}), and device "
                       f"{device.name}'s does not restore with it, so its CRIU would refuse the images: add "
                       f"{' and '.join(lacking)} to {criu_compat.RUNC_CONF} on the device")
    if facts.inet_sockets and not criu_compat.dumps_inet_sockets(hello.criu_version, hello.kernel_release):
        raise Rejected(f"the container holds {facts.inet_sockets} network socket(s), and device {device.name}'s "
                       f"{criu_compat.socket_advice(hello.criu_version, hello.kernel_release)}")


async def _across_isas(source: Source, device: DeviceSettings, facts: SourceFacts,
                       hello: pb.AgentHello) -> CrossIsa | Emulated:
    """Recoded in the manner of criu-het (Popcorn binaries), or run under the device's emulator — as the
    device's `emulate` says ("auto": recoded when every task is a Popcorn binary, else emulated)."""
    if (facts.isa, hello.isa) not in RECODED_ISAS:
        raise Rejected(f"cannot move from {facts.isa} to {hello.isa} (x86_64 ↔ aarch64 only)")
    if (facts.isa, hello.isa) not in EMULATED_ISAS:  # the way back: Popcorn binaries or nothing
        return await _cross_isa(source, facts, hello)
    if device.emulate == "true":
        return await _emulated(source, device, facts, hello)
    try:
        return await _cross_isa(source, facts, hello)
    except Rejected as not_popcorn:
        if device.emulate == "false":
            raise
        if not hello.emulator:
            raise Rejected(f"{not_popcorn}; nor can device {device.name} run it emulated (it has no static "
                           "qemu-x86_64: see `androcond devices`)") from not_popcorn
        log.info("not Popcorn binaries: the container will run emulated on the device", why=str(not_popcorn))
        return await _emulated(source, device, facts, hello)


async def _emulated(source: Source, device: DeviceSettings, facts: SourceFacts, hello: pb.AgentHello) -> Emulated:
    if not hello.emulator:
        raise Rejected(f"device {device.name} cannot run x86_64 containers emulated: it has no static "
                       "qemu-x86_64 (emulate = true)")
    blockers, notes = await source.emulation_blockers(facts.pids, hello.emulator_version)
    if blockers:
        raise Rejected("cannot run this container emulated on device "
                       f"{device.name}:\n  " + "\n  ".join(blockers))
    return Emulated(hello.emulator, hello.emulator_version, tuple(notes), stub=hello.emulator_stub)


async def _cross_isa(source: Source, facts: SourceFacts, hello: pb.AgentHello) -> CrossIsa:
    """Across ISAs in the manner of criu-het: every task must be a Popcorn binary with both variants."""
    if not hello.vdso:
        raise Rejected(f"the {hello.isa} device did not report its vdso (agent too old?)")
    executables = await source.popcorn_executables(facts.pids, hello.isa)
    return CrossIsa(facts.pids, hello.isa, VdsoTemplate(hello.vdso, hello.vvar_size, hello.page_size), executables)


def _flat(device: DeviceSettings, lazy: bool, emulated: Emulated | None) -> bool:
    """The flat freeze (`freeze = "flat"`) where it is built: post-copy, from this host or from a device (the way
    back), on the same ISA or across ISAs. Across ISAs the recode reads one thing of the memory, the registers the
    notify left in regs_dst/tls_dst; where a lazy dump leaves them to post-copy (a runtime's .bss), it takes the
    copy the notify read at the migration point. Else the memory is dumped first, as with `freeze = "dump"`."""
    if device.freeze != "flat":
        return False
    why_not = [why for why, blocks in (
        ("post-copy is off for this move", not lazy),
        ("the move runs emulated (the restorer reads every page before it resumes)", emulated is not None),
    ) if blocks]
    if why_not:
        log.info("the flat freeze is off for this move; the memory is dumped first", why="; ".join(why_not))
    return not why_not


def _lazy(facts: SourceFacts, device: DeviceSettings, hello: pb.AgentHello, emulated: Emulated | None) -> bool:
    """Post-copy per the device's `lazy` setting: "true" refuses a move that cannot have it, "auto" takes it when
    every part can. Across ISAs too: what is served (the recoded images, or the frozen tasks of a flat freeze) is
    the memory as the notified program left it (its own state, ISA-neutral); only the executable's pages differ,
    and the recode drops those, so they are read from the target's binary, never served."""
    if device.lazy == "false":
        return False
    why_not = []
    if not hello.lazy_pages:
        why_not.append(f"device {device.name} cannot restore lazily (it needs androcond's runtime in its engine "
                       "and userfaultfd in its kernel)")
    if facts.page_server_blocker:
        why_not.append(facts.page_server_blocker)
    if emulated is not None:
        why_not.append("post-copy under emulation is not built (the restorer reads every page before it resumes)")
    if facts.lazy_needs_flat and device.freeze != "flat":
        why_not.append("post-copy from a device is served by its flat freeze only (freeze = \"flat\")")
    if why_not and device.lazy == "true":
        raise Rejected(f"post-copy (lazy = true) is not possible: {'; '.join(why_not)}")
    if why_not:
        log.info("post-copy off for this move", why="; ".join(why_not))
    return not why_not
