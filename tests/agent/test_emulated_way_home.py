"""Home from emulation, through the daemon: the heap program (two threads, a 64 MB heap, glibc) goes out to the
arm64 device by its label and runs there under qemu-x86_64; `androcond migrate NAME --to host` brings it home.
The device's agent reads it out of its emulator (qemu's gdb stub), pauses it and sends the restorer's plan and
its pages; the host runs androcond's restorer natively on them, in its own engine, and the program counts on
from where it was, its memory unchanged. A fault after the readout unpauses it on the device, where it counts
on; read out once, it cannot be read out again in that qemu's run, and a second way home says so."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine, EngineError
from androcond.protocol.emulation import MOUNT, RESTORER

from ..helpers import DaemonProcess
from ..testbed.arm64 import Arm64Device
from ..testbed.emulated import TUNABLES
from ..testbed.proc import wait_for
from .arm64_bed import ARM64_MARKS
from .conftest import AgentBed
from .daemon_bed import migrate_by_cli
from .test_cross_isa_resume import daemon_config
from .test_emulated_resume import _counted, _heap, _lines, _move, emulated_image, on_device

pytestmark = ARM64_MARKS
__all__ = ["emulated_image", "on_device"]  # the fixtures, shared with the way out's tests

Counts = dict[int, tuple[int, set[str]]]


def _on_the_device(device: Arm64Device, name: str, more_than: Counts | None = None) -> Counts:
    """Each thread's last count on the device and the checksums it told, once both told two counts (or, with
    `more_than`, two more than those)."""

    def lines() -> list[tuple[int, int, str]]:
        return _lines(device.adb_shell(f"docker logs {name} 2>&1", timeout=120))

    def told() -> bool:
        seen = lines()
        return all(sum(1 for n, r, _ in seen if r == role and (more_than is None or n > more_than[role][0])) >= 2
                   for role in (0, 1))

    wait_for(told, timeout=240, interval=2, what="both threads counting on the device")
    seen = lines()
    return {role: (max(n for n, r, _ in seen if r == role), {s for _, r, s in seen if r == role}) for role in (0, 1)}


async def _home(agent: AgentBed, device: Arm64Device, directory: Path, name: str,
                fault: str = "") -> tuple[int, dict[str, Any]]:
    config = daemon_config(agent, device, directory)  # its journal: where the move out left it
    env = {**os.environ, "ANDROCOND_INJECT_FAULT": f"{fault}@{name}"} if fault else None
    daemon = DaemonProcess(config, env=env)
    try:
        await daemon.start()
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        return await migrate_by_cli(config, name, "host")
    finally:
        await daemon.kill()


def _device_state(device: Arm64Device, name: str) -> str:
    return device.adb_shell(f"docker inspect -f '{{{{.State.Status}}}}' {name} 2>&1 || true", timeout=120).strip()


async def test_an_emulated_container_comes_home_and_runs_natively(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str) -> None:
    end, _ = await _move(agent_server, arm64_device, engine_a, _heap(emulated_image, TUNABLES), on_device,
                         tmp_path, _counted(3))
    assert end["state"] == "done", end.get("detail")
    there = _on_the_device(arm64_device, on_device)
    try:
        code, record = await _home(agent_server, arm64_device, tmp_path, on_device)
        assert code == 0 and record["state"] == "done", (record["state"], record.get("error"))
        assert (record["from"], record["to"]) == ("arm64", "host"), record
        print(f"home from emulation: {record.get('timings')}")
        adjusted = record.get("adjusted") or {}
        assert "(readout)" in adjusted and "signal mask" in str(adjusted["(readout)"]), adjusted
        at_home: list[tuple[int, int, str]] = []
        for _ in range(600):
            at_home = _lines(await engine_a.container_logs(on_device))
            if all(sum(1 for _, r, _ in at_home if r == role) >= 3 for role in (0, 1)):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"not counting at home: {(await engine_a.container_logs(on_device))[-1000:]}")
        for role in (0, 1):
            last, sums = there[role]
            counts = [n for n, r, _ in at_home if r == role]
            # On from the device's last count or later (counts told after we read the log), never from 1.
            assert last <= counts[0] <= last + 30, (role, last, counts[:3])
            assert counts == list(range(counts[0], counts[0] + len(counts))), counts
            assert {s for _, r, s in at_home if r == role} == sums, "memory changed on the way home"
        # Natively: the restorer became the program under the engine's init; no emulator at home.
        inspect = await engine_a.inspect_container(on_device)
        (child,) = Path(f"/proc/{inspect['State']['Pid']}/task/{inspect['State']['Pid']}/children").read_text().split()
        # (Its file is gone: the restorer's directory is emptied once it has read it.)
        assert os.readlink(f"/proc/{child}/exe").startswith(f"{MOUNT}/{RESTORER}")
        assert len(os.listdir(f"/proc/{child}/task")) == 2
        assert inspect["Config"]["Env"][-1:] == [TUNABLES] or TUNABLES in inspect["Config"]["Env"]
        # Exactly once: the device's container is gone.
        assert "No such" in _device_state(arm64_device, on_device) or not _device_state(arm64_device, on_device)
    finally:
        try:
            await engine_a.remove_container(on_device, force=True)
        except EngineError:
            pass


@pytest.mark.parametrize("fault", ["commit", "restore-refused"])
async def test_a_fault_after_the_readout_leaves_it_counting_on_the_device(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str, fault: str) -> None:
    """`commit`: the daemon fails after the host has every file; `restore-refused`: the host's restorer gets an
    empty plan and refuses it. Either way the device's container is unpaused and counts on."""
    end, _ = await _move(agent_server, arm64_device, engine_a, _heap(emulated_image, TUNABLES), on_device,
                         tmp_path, _counted(3))
    assert end["state"] == "done", end.get("detail")
    there = _on_the_device(arm64_device, on_device)
    code, record = await _home(agent_server, arm64_device, tmp_path, on_device, fault=fault)
    assert code != 0 and record["state"] == "rolled-back", (record["state"], record.get("error"))
    if fault == "restore-refused":
        assert "did not restore" in str(record.get("error")), record
    # Unpaused where it stopped: the same process counts on, its memory as it was.
    assert _device_state(arm64_device, on_device) == "running"
    again = _on_the_device(arm64_device, on_device, more_than=there)
    for role in (0, 1):
        assert again[role][1] == there[role][1], "memory changed on the device"
    with pytest.raises(EngineError):
        await engine_a.inspect_container(on_device)
    if fault != "commit":
        return
    # Its qemu's one stub connection is spent: a second way home is refused before anything is frozen.
    code, record = await _home(agent_server, arm64_device, tmp_path, on_device)
    assert record["state"] == "rejected" and "read out once already" in str(record.get("error")), record
    assert _device_state(arm64_device, on_device) == "running"
