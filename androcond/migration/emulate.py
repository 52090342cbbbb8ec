"""A move across ISAs under the target's emulator: the parts of the phases that differ. Preflight gives the
target container the emulator and androcond's restorer as its entry point; the stream sends, besides the
dump, the restorer and its plan (made from the dump once it exists). The device mounts them at MOUNT and
starts the container; nothing of CRIU runs there.

The way home (`Plan.native_resume`): the device reads the process out of its emulator into a plan of the same
format (agent/readout.py), and the host runs the same restorer natively on it, as the container's entry point
in its engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..emulation.build import restorer_path
from ..emulation.plan import EmulationRefused, PlanSummary, entrypoint, make_plan
from ..link.payload import OutgoingFile
from ..protocol import protocol_pb2 as pb
from ..protocol.emulation import EMULATOR, MOUNT, PLAN, RESTORER, STATUS, STUB_MOUNT, STUB_SOCKET, native_argv
from .container_config import TargetPlan
from .errors import Rejected
from .plan import Emulated

WHY = "runs under the device's qemu-x86_64: androcond's restorer rebuilds the process there"
HOME_WHY = ("brought home from emulation: androcond's restorer rebuilds the process natively from what the device "
            "read out of its emulator, and becomes it")
# As PID 1, a qemu that dies of the guest's signal cannot kill itself (the kernel drops an init's own
# default-action signals): it would hang with the container still "running". Under the engine's init it dies,
# the container exits, and the device sees a failed restore.
INIT_WHY = "the engine's init runs the restorer's process, so that the process dying ends the container"


def target_plan(target: TargetPlan, emulated: Emulated) -> TargetPlan:
    """The create body with the emulator and the restorer as the entry point (the image and all else stay)."""
    argv = entrypoint(f"{MOUNT}/{EMULATOR}", MOUNT, stub=emulated.stub)  # the device places its own emulator there
    return _run_by_restorer(target, argv, WHY)


def native_target_plan(target: TargetPlan) -> TargetPlan:
    """The way home: the container's configuration at home, with the restorer (natively) as the entry point."""
    return _run_by_restorer(target, native_argv(), HOME_WHY)


def restorer_file() -> OutgoingFile:
    """androcond's restorer, for a target that runs it natively (it has none of its own)."""
    restorer = restorer_path()
    return OutgoingFile(pb.CHECKPOINT, RESTORER, source=restorer, size=restorer.stat().st_size, mode=0o755)


def _run_by_restorer(target: TargetPlan, argv: list[str], why: str) -> TargetPlan:
    body = dict(target.body)
    adjusted = dict(target.adjusted)
    adjusted["Entrypoint"] = {"from": body.get("Entrypoint"), "to": argv, "why": why}
    adjusted["Cmd"] = {"from": body.get("Cmd"), "to": None, "why": why}
    body["Entrypoint"] = argv
    body["Cmd"] = None
    host = dict(body.get("HostConfig") or {})
    if host.get("Init") is not True:
        adjusted["HostConfig.Init"] = {"from": host.get("Init"), "to": True, "why": INIT_WHY}
        host["Init"] = True
        body["HostConfig"] = host
    return TargetPlan(body, adjusted)


async def files(images: Path, workspace: Path, *, cut_plan: bool = False,
                stub: bool = False) -> tuple[list[OutgoingFile], PlanSummary]:
    """The restorer and its plan, made from the dump in `images` into `workspace`. A dump the restorer cannot
    rebuild (what the live checks could not see) is refused here, and the move rolls back. `cut_plan` is the
    `bad-plan` fault: half the plan is sent. `stub`: the emulator runs its gdb stub (the plan names its socket,
    which the restorer moves out of the dumped fds' way)."""

    def make() -> tuple[list[OutgoingFile], PlanSummary]:
        workspace.mkdir(parents=True, exist_ok=True)
        plan = workspace / PLAN
        summary = make_plan(images, plan, mount=MOUNT, status=f"{MOUNT}/{STATUS}",
                            stub=f"{STUB_MOUNT}/{STUB_SOCKET}" if stub else None)
        if cut_plan:
            with plan.open("r+b") as f:
                f.truncate(plan.stat().st_size // 2)
        return [OutgoingFile(pb.CHECKPOINT, PLAN, source=plan, size=plan.stat().st_size), restorer_file()], summary

    try:
        return await asyncio.to_thread(make)
    except EmulationRefused as exc:
        raise Rejected(f"the restorer cannot rebuild this process under emulation: {exc}") from exc
