"""Across ISAs, preflight decides between the recode (Popcorn binaries) and the device's emulator, as the
device's `emulate` says, and refuses with the reasons before anything is frozen. The source here is a small
fake with the two answers the decision needs (the real ones are proven on the bed)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from androcond.agent.device import read_vdso
from androcond.config import DeviceSettings, TriState
from androcond.migration.container_config import TargetPlan
from androcond.migration.emulate import target_plan
from androcond.migration.errors import Rejected
from androcond.migration.plan import CrossIsa, Emulated, SourceFacts
from androcond.migration.preflight import _across_isas
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.emulation import EMULATOR, MOUNT, PLAN, RESTORER

QEMU = "/usr/bin/qemu-x86_64"


@dataclass
class Source:
    popcorn: bool = False
    blockers: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    async def popcorn_executables(self, pids: tuple[int, ...], target_isa: str) -> tuple[str, ...]:
        self.asked.append("popcorn")
        if not self.popcorn:
            raise Rejected(f"cannot move to an {target_isa} device: process 1 (/bin/app): __migrate_gb missing")
        return ("/bin/app",)

    async def emulation_blockers(self, pids: tuple[int, ...], version: str) -> tuple[list[str], list[str]]:
        self.asked.append(f"emulation {version}")
        return self.blockers, ["the libc of process 1 is not known"]


FACTS = SourceFacts(pids=(1,), va_bits=47, isa="x86_64", criu_options=(), inet_sockets=0, cgroup_v2=True,
                    absent_paths=frozenset(), page_server_blocker="", memory=0, disk=0)


VDSO, VVAR_SIZE = read_vdso()  # this process's own: any kernel's vdso will do for the decision


def hello(emulator: str = QEMU, isa: str = "aarch64") -> pb.AgentHello:
    return pb.AgentHello(isa=isa, vdso=VDSO, vvar_size=VVAR_SIZE, page_size=4096, emulator=emulator,
                         emulator_version="10.0.13" if emulator else "")


def device(emulate: TriState) -> DeviceSettings:
    return DeviceSettings(name="phone", adb_serial="serial", emulate=emulate)


async def test_auto_recodes_popcorn_binaries() -> None:
    way = await _across_isas(Source(popcorn=True), device("auto"), FACTS, hello())  # type: ignore[arg-type]
    assert isinstance(way, CrossIsa) and way.executables == ("/bin/app",)


async def test_auto_emulates_what_is_not_popcorn_when_the_device_can() -> None:
    source = Source()
    way = await _across_isas(source, device("auto"), FACTS, hello())  # type: ignore[arg-type]
    assert way == Emulated(QEMU, "10.0.13", ("the libc of process 1 is not known",))
    assert source.asked == ["popcorn", "emulation 10.0.13"]


async def test_auto_without_an_emulator_gives_both_reasons() -> None:
    with pytest.raises(Rejected, match=r"__migrate_gb missing.*nor can device phone run it emulated"):
        await _across_isas(Source(), device("auto"), FACTS, hello(emulator=""))  # type: ignore[arg-type]


async def test_false_never_emulates() -> None:
    source = Source()
    with pytest.raises(Rejected, match="cannot move to an aarch64 device") as refused:
        await _across_isas(source, device("false"), FACTS, hello())  # type: ignore[arg-type]
    assert "emulated" not in str(refused.value)
    assert source.asked == ["popcorn"]


async def test_true_emulates_even_popcorn_binaries() -> None:
    source = Source(popcorn=True)
    way = await _across_isas(source, device("true"), FACTS, hello())  # type: ignore[arg-type]
    assert isinstance(way, Emulated) and source.asked == ["emulation 10.0.13"]


async def test_true_without_an_emulator_is_refused() -> None:
    with pytest.raises(Rejected, match="no static qemu-x86_64"):
        await _across_isas(Source(), device("true"), FACTS, hello(emulator=""))  # type: ignore[arg-type]


async def test_every_blocker_is_named() -> None:
    source = Source(blockers=["process 7 (app): fd 4 is a unix socket", "2 processes: emulation restores one"])
    with pytest.raises(Rejected) as refused:
        await _across_isas(source, device("auto"), FACTS, hello())  # type: ignore[arg-type]
    assert "fd 4 is a unix socket" in str(refused.value) and "2 processes" in str(refused.value)


async def test_no_third_isa() -> None:
    with pytest.raises(Rejected, match=r"cannot move from x86_64 to riscv64 \(x86_64 ↔ aarch64 only\)"):
        await _across_isas(Source(), device("true"), FACTS, hello(isa="riscv64"))  # type: ignore[arg-type]


def test_the_target_runs_the_restorer_under_the_emulator() -> None:
    plan = target_plan(TargetPlan({"Image": "app:1", "Entrypoint": ["/bin/app"], "Cmd": ["--serve"]}),
                       Emulated(QEMU, "10.0.13"))
    entry = plan.body["Entrypoint"]
    assert entry[0] == f"{MOUNT}/{EMULATOR}" and entry[-2:] == [f"{MOUNT}/{RESTORER}", f"{MOUNT}/{PLAN}"]
    assert plan.body["Cmd"] is None and plan.body["Image"] == "app:1"
    assert plan.adjusted["Entrypoint"]["from"] == ["/bin/app"] and plan.adjusted["Cmd"]["from"] == ["--serve"]
    # The engine's init runs the emulator: a qemu that dies as PID 1 would hang instead of ending the container.
    assert plan.body["HostConfig"]["Init"] is True
    assert (plan.adjusted["HostConfig.Init"]["from"], plan.adjusted["HostConfig.Init"]["to"]) == (None, True)


def test_a_container_with_its_own_init_keeps_it_unadjusted() -> None:
    plan = target_plan(TargetPlan({"Image": "app:1", "HostConfig": {"Init": True, "Memory": 64 << 20}}),
                       Emulated(QEMU, "10.0.13"))
    assert plan.body["HostConfig"] == {"Init": True, "Memory": 64 << 20}
    assert "HostConfig.Init" not in plan.adjusted


ON_THE_DEVICE = SourceFacts(pids=(), va_bits=47, isa="aarch64", criu_options=(), inet_sockets=0, cgroup_v2=True,
                            absent_paths=frozenset(), page_server_blocker="", memory=0, disk=0)


@pytest.mark.parametrize("emulate", ["auto", "true"])
async def test_the_way_back_recodes_and_never_emulates(emulate: TriState) -> None:
    """aarch64 → x86_64 (a device as the source): Popcorn binaries or a refusal, whatever `emulate` says."""
    way = await _across_isas(Source(popcorn=True), device(emulate), ON_THE_DEVICE,  # type: ignore[arg-type]
                             hello(emulator="", isa="x86_64"))
    assert isinstance(way, CrossIsa) and way.target == "x86_64" and way.vdso.image == VDSO
    source = Source()
    with pytest.raises(Rejected, match="__migrate_gb missing") as refused:
        await _across_isas(source, device(emulate), ON_THE_DEVICE, hello(isa="x86_64"))  # type: ignore[arg-type]
    assert "emulat" not in str(refused.value) and source.asked == ["popcorn"]


async def test_an_isa_pair_without_a_way_is_refused() -> None:
    with pytest.raises(Rejected, match=r"cannot move from aarch64 to riscv64 \(x86_64 ↔ aarch64 only\)"):
        await _across_isas(Source(popcorn=True), device("auto"), ON_THE_DEVICE,  # type: ignore[arg-type]
                           hello(isa="riscv64"))
