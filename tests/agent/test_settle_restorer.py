"""An agent that died between the restorer's start and letting it go (real bed: the host's engine, nsenter).

Home from emulation, androcond's runtime starts the container once with the restorer's directory mounted at
/.androcond and a copy of the restorer in its root; the agent unmounts and removes both once the process
runs. If that agent died in between, its successor settles the restore as running — and now lets go of them
too, or the container could never be checkpointed again. An emulated container (its emulator runs from that
directory, bound by the engine) keeps it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from androcond.agent.device import DeviceEngine, DeviceFacts
from androcond.agent.outcomes import OutcomeRecord, OutcomeStore, ProcessIdentity
from androcond.agent.recovery import settle_if_stale
from androcond.engine import Engine
from androcond.protocol.codes import OutcomeState
from androcond.protocol.emulation import MOUNT, ROOTFS_RESTORER, restorer_mounted

from ..helpers import start_counting
from .test_daemon_faults import labelled_counter

pytestmark = pytest.mark.testbed


def _dead_owner() -> ProcessIdentity:
    """A process that was and is no more: the agent that wrote the record."""
    child = subprocess.Popen(["true"])
    me = ProcessIdentity.of(child.pid)
    child.wait()
    return me or ProcessIdentity(child.pid, 0)


def _leave_the_restorer_s_traces(pid: int) -> None:
    """What the runtime's one start leaves: a directory bound at MOUNT (one of the container's own: the
    namespace sees nothing of the host's), the restorer's copy in its root."""
    os.mkdir(f"/proc/{pid}/root/.restorer-dir")
    os.mkdir(f"/proc/{pid}/root{MOUNT}")
    Path(f"/proc/{pid}/root{ROOTFS_RESTORER}").write_bytes(b"\x7fELF restorer")
    subprocess.run(["nsenter", f"--target={pid}", "--mount", "mount", "--bind", "/.restorer-dir", MOUNT],
                   check=True, capture_output=True)
    assert restorer_mounted(pid)


async def test_a_restore_settled_as_running_lets_go_of_the_restorer(
        engine_a: Engine, tmp_path: Path, unique_name: str) -> None:
    config = labelled_counter()
    config["Labels"] = {k: v for k, v in config["Labels"].items() if k != "androcond.migrate"}
    await start_counting(engine_a, config, unique_name)
    inspect = await engine_a.inspect_container(unique_name)
    pid = int(inspect["State"]["Pid"])
    _leave_the_restorer_s_traces(pid)

    store = OutcomeStore(tmp_path / "outcomes")
    device = DeviceEngine(engine_a, DeviceFacts(isa="x86_64", page_size=4096, criu_version="4.2",
                                                engine_version="", data_root=tmp_path), tmp_path / "spool")
    stale = OutcomeRecord("m-settle", OutcomeState.RESTORING, inspect["Id"])
    dead = _dead_owner()
    stale.owner_pid, stale.owner_start = dead.pid, dead.start

    settled = await settle_if_stale(store, device, stale)

    assert settled.state == OutcomeState.RUNNING and settled.container_id == inspect["Id"]
    assert not restorer_mounted(pid), "the restorer's directory is still mounted"
    assert not os.path.exists(f"/proc/{pid}/root{ROOTFS_RESTORER}")
    assert (await engine_a.inspect_container(unique_name))["State"]["Running"]


async def test_an_emulated_container_settled_as_running_keeps_its_directory(
        engine_a: Engine, tmp_path: Path, unique_name: str) -> None:
    """Its emulator runs from MOUNT, which the engine binds (the runtime did not): nothing is unmounted."""
    (tmp_path / "restorer").mkdir()
    config = labelled_counter()
    config["Labels"] = {k: v for k, v in config["Labels"].items() if k != "androcond.migrate"}
    config["HostConfig"] = {"Binds": [f"{tmp_path / 'restorer'}:{MOUNT}:ro"]}
    await start_counting(engine_a, config, unique_name)
    inspect = await engine_a.inspect_container(unique_name)
    device = DeviceEngine(engine_a, DeviceFacts(isa="x86_64", page_size=4096, criu_version="4.2",
                                                engine_version="", data_root=tmp_path), tmp_path / "spool")
    stale = OutcomeRecord("m-settle", OutcomeState.RESTORING, inspect["Id"])
    dead = _dead_owner()
    stale.owner_pid, stale.owner_start = dead.pid, dead.start

    settled = await settle_if_stale(OutcomeStore(tmp_path / "outcomes"), device, stale)

    assert settled.state == OutcomeState.RUNNING
    assert restorer_mounted(int(inspect["State"]["Pid"]))
