"""The way home from emulation, its decisions: preflight sends a container that runs x86_64 under its device's
emulator to an x86_64 machine only, read out of the emulator and rebuilt natively by the restorer (nothing
recoded, relayed as it comes), and refuses with the reason what cannot go; the agent tells an emulated
container by its mounts, and why one cannot be read out. The source here is a small fake with the facts the
decision reads (the real readout is proven on the bed: tests/agent/test_emulated_way_home.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from androcond.agent import readout
from androcond.config import DeviceSettings
from androcond.migration import preflight
from androcond.migration.container_config import TargetPlan
from androcond.migration.errors import Rejected
from androcond.migration.plan import SourceFacts
from androcond.migration.stream import needs_recode, relays
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.emulation import MOUNT, PLAN, RESTORER, STUB_MOUNT, restorer_mounted

HOME_BODY = {"Image": "heap:1", "Entrypoint": None, "Cmd": ["/bin/heap"], "Env": ["A=1"],
             "HostConfig": {"Init": False, "RestartPolicy": {"Name": "no"}}}
FACTS = SourceFacts(pids=(), va_bits=47, isa="x86_64", criu_options=(), inet_sockets=0, cgroup_v2=True,
                    absent_paths=frozenset(), page_server_blocker="", memory=64 << 20, disk=4096,
                    lazy_needs_flat=True, emulated=True)


@dataclass
class Source:
    facts_seen: SourceFacts = FACTS

    async def target_plan(self, inspect: dict[str, Any], device: DeviceSettings) -> TargetPlan:
        return TargetPlan(dict(HOME_BODY))

    async def facts(self, inspect: dict[str, Any]) -> SourceFacts:
        return self.facts_seen


def hello(isa: str = "x86_64", free: int = 1 << 40) -> pb.AgentHello:
    return pb.AgentHello(isa=isa, free_bytes=free, criu_version="4.1")


HOST = DeviceSettings(name="host", adb_serial="")


async def test_an_emulated_container_goes_home_read_out_and_rebuilt_natively() -> None:
    plan = await preflight.plan(Source(), HOST, {"Id": "c"}, hello())  # type: ignore[arg-type]
    assert plan.native_resume and plan.emulated is None and plan.cross is None
    assert not plan.lazy and not plan.flat
    body = plan.target.body
    assert body["Entrypoint"] == [f"{MOUNT}/{RESTORER}", f"{MOUNT}/{PLAN}"] and body["Cmd"] is None
    assert body["HostConfig"]["Init"] is True and body["Env"] == ["A=1"] and body["Image"] == "heap:1"
    # Each change said, with what it was at home.
    assert plan.target.adjusted["Cmd"]["from"] == ["/bin/heap"]
    assert plan.target.adjusted["HostConfig.Init"]["from"] is False
    # Nothing to recode: the device's files go on to the host as they come.
    assert not needs_recode(plan) and relays(plan)


async def test_through_androcond_s_runtime_it_goes_home_with_its_own_configuration() -> None:
    """A target whose engine has androcond's runtime starts it once with the restorer: the create body is the
    container's configuration at home, unchanged."""
    with_runtime = hello()
    with_runtime.androcond_runtime = True
    plan = await preflight.plan(Source(), HOST, {"Id": "c"}, with_runtime)  # type: ignore[arg-type]
    assert plan.native_resume and plan.target.body == HOME_BODY and not plan.target.adjusted


async def test_its_network_sockets_go_home_made_afresh() -> None:
    plan = await preflight.plan(Source(replace(FACTS, inet_sockets=2)), HOST, {"Id": "c"},  # type: ignore[arg-type]
                                hello())
    assert plan.native_resume


@pytest.mark.parametrize(("facts", "device", "target", "reason"), [
    (FACTS, HOST, hello(isa="aarch64"), r"x86_64 machine only, and host is aarch64"),
    (replace(FACTS, readout_blocker="it runs without qemu's gdb stub"), HOST, hello(),
     r"cannot be read out: it runs without qemu's gdb stub"),
    (replace(FACTS, readout_blocker="fd 5 is a pipe, which the way home does not carry yet"), HOST, hello(),
     r"cannot be read out: fd 5 is a pipe"),
    (FACTS, replace(HOST, lazy="true"), hello(), r"post-copy \(lazy = true\) is not possible"),
    (FACTS, HOST, hello(free=1 << 20), r"bytes free"),
])
async def test_what_cannot_go_home_is_refused_with_the_reason(facts: SourceFacts, device: DeviceSettings,
                                                             target: pb.AgentHello, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        await preflight.plan(Source(facts), device, {"Id": "c"}, target)  # type: ignore[arg-type]


def _inspect(binds: list[str], tmpfs: dict[str, str] | None = None) -> dict[str, Any]:
    return {"Id": "abc123", "HostConfig": {"Binds": binds, "Tmpfs": tmpfs}}


def test_the_agent_tells_an_emulated_container_by_its_restorer_mount() -> None:
    assert readout.emulated(_inspect([f"/spool/emulated/m1:{MOUNT}:ro"]))
    assert not readout.emulated(_inspect(["/data:/data", f"/x:{MOUNT}-not:ro"]))
    assert not readout.emulated({"Id": "c", "HostConfig": {}})


def test_why_a_container_cannot_be_read_out(tmp_path: Path) -> None:
    binds = [f"/spool/emulated/m1:{MOUNT}:ro"]
    without_stub = readout.blocker(_inspect(binds), tmp_path)
    assert "without qemu's gdb stub" in without_stub
    with_stub = _inspect(binds, {STUB_MOUNT: "mode=1777,size=64k"})
    assert readout.blocker(with_stub, tmp_path) == ""
    # Once its stub was used (a way home that rolled back), it cannot be read out again in this qemu's run.
    (tmp_path / readout.READOUTS).mkdir()
    (tmp_path / readout.READOUTS / "abc123").touch()
    assert "read out once already" in readout.blocker(with_stub, tmp_path)
    readout.forget(tmp_path, "abc123")  # the container went: so does its mark
    assert readout.blocker(with_stub, tmp_path) == ""


class _Listing:
    """An engine's container listing, all that the sweep asks of it (a fast-tier fake)."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.asked: list[bool] = []

    async def list_containers(self, *, all_states: bool = False) -> list[dict[str, Any]]:
        self.asked.append(all_states)
        return [{"Id": cid} for cid in self.ids]


async def test_the_marks_of_containers_removed_elsewhere_are_swept(tmp_path: Path) -> None:
    marks = tmp_path / readout.READOUTS
    assert await readout.sweep(_Listing([]), tmp_path) == []  # type: ignore[arg-type]  # no marks: nothing asked
    marks.mkdir()
    for cid in ("kept", "gone", "stopped"):
        (marks / cid).touch()
    engine = _Listing(["kept", "stopped", "other"])
    assert await readout.sweep(engine, tmp_path) == ["gone"]  # type: ignore[arg-type]
    assert sorted(p.name for p in marks.iterdir()) == ["kept", "stopped"]
    assert engine.asked == [True]  # stopped containers are listed too: a stopped one keeps its mark


def test_the_restorers_mount_still_there_is_seen(tmp_path: Path) -> None:
    """A checkpoint of a process whose container still has MOUNT (an unmount that failed after the restore) could
    not be restored anywhere, its engine not knowing that mount: the sources refuse it by this."""
    line = "{n} 1 0:{n} / {at} rw,relatime - overlay overlay rw"
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "mountinfo").write_text("\n".join(line.format(n=n, at=at) for n, at in
                                                        enumerate(["/", "/proc", MOUNT])) + "\n")
    assert restorer_mounted(7, proc=tmp_path)
    (tmp_path / "7" / "mountinfo").write_text(line.format(n=1, at="/") + "\n" + line.format(n=2, at=MOUNT + "x"))
    assert not restorer_mounted(7, proc=tmp_path)
    assert not restorer_mounted(8, proc=tmp_path), "a process gone is no reason"
