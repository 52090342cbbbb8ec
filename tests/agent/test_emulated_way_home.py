"""Home from emulation, through the daemon: the heap program (two threads, a 64 MB heap, glibc) goes out to the
arm64 device by its label and runs there under qemu-x86_64; `androcond migrate NAME --to host` brings it home.
The device's agent reads it out of its emulator (qemu's gdb stub), pauses it and sends the restorer's plan and
its pages; the host runs androcond's restorer natively on them, in its own engine, and the program counts on
from where it was, its memory unchanged. A fault after the readout unpauses it on the device, where it counts
on; read out once, it cannot be read out again in that qemu's run, and a second way home says so."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine, EngineError
from androcond.protocol.emulation import ROOTFS_RESTORER, restorer_mounted

from ..helpers import DaemonProcess
from ..testbed import TestBed
from ..testbed.arm64 import Arm64Device
from ..testbed.device import ADB
from ..testbed.emulated import TUNABLES
from ..testbed.engines import DockerEngine
from ..testbed.proc import wait_for
from .arm64_bed import ARM64_MARKS
from .conftest import AgentBed
from .daemon_bed import finished, killed_at, migrate_by_cli, state_of
from .test_cross_isa_resume import daemon_config
from .test_emulated_resume import (
    HTTP_PORT,
    _counted,
    _fetch_through_adb,
    _heap,
    _http_on_device,
    _lines,
    _move,
    emulated_image,
    on_device,
)

pytestmark = ARM64_MARKS
__all__ = ["emulated_image", "on_device"]  # the fixtures, shared with the way out's tests

Counts = dict[int, tuple[int, set[str]]]
LOG = "/tmp/heap.log"
OWN_CMD = ["/bin/sh", "-c", f"exec /bin/heap > {LOG}"]
OWN_RESTART = {"Name": "on-failure", "MaximumRetryCount": 2}


def _device_logs(device: Arm64Device, name: str) -> str:
    return device.adb_shell(f"docker logs {name} 2>&1", timeout=120)


def _device_file(device: Arm64Device, name: str) -> str:
    """LOG in the container's writable layer on the device (no `docker exec` needed there)."""
    upper = device.adb_shell(f"docker inspect -f '{{{{.GraphDriver.Data.UpperDir}}}}' {name}", timeout=120).strip()
    return device.adb_shell(f"cat {upper}{LOG}", timeout=120)


def _on_the_device(device: Arm64Device, name: str, more_than: Counts | None = None,
                   read: Callable[[Arm64Device, str], str] = _device_logs) -> Counts:
    """Each thread's last count on the device and the checksums it told, once both told two counts (or, with
    `more_than`, two more than those)."""

    def lines() -> list[tuple[int, int, str]]:
        return _lines(read(device, name))

    def told() -> bool:
        seen = lines()
        return all(sum(1 for n, r, _ in seen if r == role and (more_than is None or n > more_than[role][0])) >= 2
                   for role in (0, 1))

    wait_for(told, timeout=240, interval=2, what="both threads counting on the device")
    seen = lines()
    return {role: (max(n for n, r, _ in seen if r == role), {s for _, r, s in seen if r == role}) for role in (0, 1)}


async def _home(agent: AgentBed, device: Arm64Device, directory: Path, name: str,
                fault: str = "", to: str = "host") -> tuple[int, dict[str, Any]]:
    config = daemon_config(agent, device, directory)  # its journal: where the move out left it
    env = {**os.environ, "ANDROCOND_INJECT_FAULT": f"{fault}@{name}"} if fault else None
    daemon = DaemonProcess(config, env=env)
    try:
        await daemon.start()
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        return await migrate_by_cli(config, name, to)
    finally:
        await daemon.kill()


async def _out_writing_a_file(testbed: TestBed, agent: AgentBed, device: Arm64Device, engine: Engine, image: str,
                              name: str, directory: Path) -> Counts:
    """The heap program, its counts written to LOG in its writable layer, moved out to run emulated on the
    device; each thread's last count there once it counts on."""
    config = {"Image": image, "Env": [TUNABLES], "Cmd": OWN_CMD, "HostConfig": {"RestartPolicy": OWN_RESTART}}

    def counted_at_source(_logs: str) -> bool:
        return bool(_counted(3)(testbed.engine_a.cli("exec", name, "cat", LOG, check=False)))

    end, _ = await _move(agent, device, engine, config, name, directory, counted_at_source)
    assert end["state"] == "done", end.get("detail")
    return _on_the_device(device, name, read=_device_file)


async def _counting_on_in_the_file(engine: DockerEngine, name: str, there: Counts, where: str) -> None:
    """LOG, now in `engine`'s container, goes on past what the device wrote: one file from the source's first
    count on (nothing lost, nothing told twice, nothing overwritten), the memory's checksums unchanged."""
    lines: list[tuple[int, int, str]] = []
    for _ in range(600):
        lines = _lines(engine.cli("exec", name, "cat", LOG, check=False))
        if all(any(r == role and n >= there[role][0] + 3 for n, r, _ in lines) for role in (0, 1)):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"not counting on {where}: {engine.cli('logs', name, check=False)[-1000:]}")
    for role in (0, 1):
        counts = [n for n, r, _ in lines if r == role]
        assert counts == list(range(1, len(counts) + 1)), (role, counts)
        assert {s for _, r, s in lines if r == role} == there[role][1], f"memory changed before it counted {where}"


def _blocked(pid: int) -> dict[int, int]:
    """Each thread's blocked signals (SigBlk) of process `pid`, by thread id."""
    blocked = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        status = Path(f"/proc/{pid}/task/{task}/status").read_text()
        blocked[int(task)] = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1],
                                 16)
    return blocked


USR1, USR2 = 1 << (signal.SIGUSR1 - 1), 1 << (signal.SIGUSR2 - 1)


def _its_masks_came_along(engine: DockerEngine, name: str) -> None:
    """Both threads' signal masks were carried (qemu kept them, not the kernel), as the kernel shows them at
    home: the main thread blocks SIGUSR2, the second SIGUSR1 and SIGUSR2."""
    pid = json.loads(engine.cli("inspect", name))[0]["State"]["Pid"]
    blocked = _blocked(pid)
    assert blocked[pid] & (USR1 | USR2) == USR2, blocked
    assert [mask & (USR1 | USR2) for task, mask in blocked.items() if task != pid] == [USR1 | USR2], blocked


def _rebuilt_natively(pid: int) -> None:
    """The restorer became the program: the container's own process (no emulator), its threads and its file at
    fd 1. It ran from its copy in the container's root, removed since, and its directory is unmounted."""
    assert os.readlink(f"/proc/{pid}/exe") == f"{ROOTFS_RESTORER} (deleted)"
    assert len(os.listdir(f"/proc/{pid}/task")) == 2
    assert os.readlink(f"/proc/{pid}/fd/1").endswith(LOG)
    assert not restorer_mounted(pid)


def _home_counts(engine: DockerEngine, name: str) -> Counts:
    """Each thread's last count in LOG at home, and the checksums it told."""
    seen = _lines(engine.cli("exec", name, "cat", LOG))
    return {role: (max(n for n, r, _ in seen if r == role), {s for _, r, s in seen if r == role}) for role in (0, 1)}


def _home_as_it_was(inspect: dict[str, Any]) -> None:
    """Its configuration is the one it had at the source: androcond's runtime ran the restorer once, with its
    directory mounted for that start only (the engine's runtime is the one change, and said so)."""
    assert inspect["Config"]["Cmd"] == OWN_CMD and not inspect["Config"]["Entrypoint"], inspect["Config"]
    assert TUNABLES in inspect["Config"]["Env"]
    host = inspect["HostConfig"]
    assert not host.get("Init") and not host.get("Binds") and host["RestartPolicy"] == OWN_RESTART, host
    assert host["Runtime"] == "androcond"


def _device_state(device: Arm64Device, name: str) -> str:
    return device.adb_shell(f"docker inspect -f '{{{{.State.Status}}}}' {name} 2>&1 || true", timeout=120).strip()


async def test_an_emulated_container_comes_home_and_runs_natively(
        testbed: TestBed, arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str,
        tmp_path: Path, on_device: str) -> None:
    """The program writes its counts into a file of its writable layer (its stdout, an fd the way home carries):
    started at the source, written on under emulation on the device, written on natively at home — one file,
    each thread's counts consecutive from 1 across the three, the memory's checksums unchanged."""
    there = await _out_writing_a_file(testbed, agent_server, arm64_device, engine_a, emulated_image, on_device,
                                      tmp_path)
    try:
        code, record = await _home(agent_server, arm64_device, tmp_path, on_device)
        assert code == 0 and record["state"] == "done", (record["state"], record.get("error"))
        assert (record["from"], record["to"]) == ("arm64", "host"), record
        print(f"home from emulation: {record.get('timings')}; adjusted: {record.get('adjusted')}")
        readout = str((record.get("adjusted") or {}).get("(readout)"))
        assert "fd 2 (pipe) is the new container's own" in readout, readout
        assert "signal actions are not carried: it has 2 threads" in readout, readout
        assert "signal mask could not be read" not in readout, readout
        await _counting_on_in_the_file(testbed.engine_a, on_device, there, "at home")
        _its_masks_came_along(testbed.engine_a, on_device)
        # Natively: the restorer became the program (the container's process, as at the source); no emulator.
        inspect = await engine_a.inspect_container(on_device)
        _rebuilt_natively(inspect["State"]["Pid"])
        _home_as_it_was(inspect)
        # Exactly once: the device's container is gone.
        assert "No such" in _device_state(arm64_device, on_device) or not _device_state(arm64_device, on_device)

        # Nothing of the restorer is left in its way: it moves on (CRIU, same ISA) to the x86_64 device.
        home = _home_counts(testbed.engine_a, on_device)
        code, record = await _home(agent_server, arm64_device, tmp_path, on_device, to="pixel")
        assert code == 0 and record["state"] == "done", (record["state"], record.get("error"))
        await _counting_on_in_the_file(testbed.engine_b, on_device, home, "on pixel")
        on_pixel = json.loads(testbed.engine_b.cli("inspect", on_device))[0]
        _home_as_it_was(on_pixel)

        # Started again by its engine, it runs its own program afresh: the restorer ran that once.
        testbed.engine_b.cli("restart", "-t", "1", on_device)
        wait_for(lambda: bool(_counted(2)(testbed.engine_b.cli("exec", on_device, "cat", LOG, check=False))),
                 timeout=60, interval=0.5, what="its own program counting afresh")
        assert min(n for n, _, _ in _lines(testbed.engine_b.cli("exec", on_device, "cat", LOG))) == 1
        again = json.loads(testbed.engine_b.cli("inspect", on_device))[0]["State"]["Pid"]
        assert os.readlink(f"/proc/{again}/exe") == "/bin/heap"  # (its shell exec'd it before it counted)
    finally:
        testbed.engine_b.cli("rm", "-f", on_device, check=False)
        try:
            await engine_a.remove_container(on_device, force=True)
        except EngineError:
            pass


async def test_an_emulated_container_moves_on_to_an_x86_64_device_natively(
        testbed: TestBed, arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str,
        tmp_path: Path, on_device: str) -> None:
    """Device to device: from the arm64 device, where it runs emulated, to the x86_64 namespace device `pixel`,
    whose agent rebuilds it natively with the restorer as the host's does — one file of counts, consecutive
    from 1 across the three places, the memory unchanged, and nothing left on the arm64 device."""
    there = await _out_writing_a_file(testbed, agent_server, arm64_device, engine_a, emulated_image, on_device,
                                      tmp_path)
    engine_b = testbed.engine_b
    try:
        code, record = await _home(agent_server, arm64_device, tmp_path, on_device, to="pixel")
        assert code == 0 and record["state"] == "done", (record["state"], record.get("error"))
        assert (record["from"], record["to"]) == ("arm64", "pixel"), record
        await _counting_on_in_the_file(engine_b, on_device, there, "on pixel")
        inspect = json.loads(engine_b.cli("inspect", on_device))[0]
        _rebuilt_natively(inspect["State"]["Pid"])
        _home_as_it_was(inspect)
        assert "No such" in _device_state(arm64_device, on_device) or not _device_state(arm64_device, on_device)
        with pytest.raises(EngineError):  # it passed by the host without landing there
            await engine_a.inspect_container(on_device)
    finally:
        engine_b.cli("rm", "-f", on_device, check=False)


@pytest.mark.parametrize("fault", ["stream", "commit", "restore-refused"])
async def test_a_fault_after_the_readout_leaves_it_counting_on_the_device(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str, fault: str) -> None:
    """`stream`: the daemon fails as the stream begins, closing the link to the device; `commit`: it fails after
    the host has every file; `restore-refused`: the host's restorer gets an empty plan and refuses it. Each way
    the device's container is unpaused and counts on."""
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


@pytest.mark.parametrize("state", ["checkpointing", "streaming", "restoring"])
async def test_the_daemon_killed_on_the_way_home_is_settled_by_its_restart(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str, state: str) -> None:
    """SIGKILL when the way home enters `state` (`checkpointing`: while the device reads it out); the next
    daemon settles it: it runs exactly once, at home or on the device, counting on, and nothing of the move is
    left at home when it stays on the device."""
    end, _ = await _move(agent_server, arm64_device, engine_a, _heap(emulated_image, TUNABLES), on_device,
                         tmp_path, _counted(3))
    assert end["state"] == "done", end.get("detail")
    there = _on_the_device(arm64_device, on_device)
    config = daemon_config(agent_server, arm64_device, tmp_path)
    await killed_at(config, on_device, "host", state, timeout=120)
    again = DaemonProcess(config)
    await again.start()
    try:
        settled = await finished(again, on_device, timeout=300)
    finally:
        await again.kill()
    if settled["state"] == "done":
        assert state == "restoring", settled
    await _exactly_once(settled, arm64_device, engine_a, on_device, there)


async def _exactly_once(settled: dict[str, Any], device: Arm64Device, engine_a: Engine, name: str,
                        there: Counts) -> None:
    """A way home that was cut short ends with the program running once: `done` — at home, counting on past
    `there`, movable again, its copy on the device gone; `rolled-back` — on the device, the same process with
    the same memory counting on, nothing left at home. The container at home is removed afterwards."""
    try:
        assert settled["state"] in ("done", "rolled-back"), settled
        if settled["state"] == "done":
            wait_for(lambda: "No such" in _device_state(device, name), timeout=120, interval=2,
                     what="its copy on the device removed")
            at_home: list[tuple[int, int, str]] = []
            for _ in range(600):
                at_home = _lines(await engine_a.container_logs(name))
                if all(any(n > there[role][0] for n, r, _ in at_home if r == role) for role in (0, 1)):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"settled as done, but not counting on at home: {at_home[-4:]}")
            # Let go of by the agent that restored it, or by the recovery that settled it: movable again.
            assert not restorer_mounted((await engine_a.inspect_container(name))["State"]["Pid"])
        else:
            assert _device_state(device, name) == "running"
            again = _on_the_device(device, name, more_than=there)
            assert all(again[role][1] == there[role][1] for role in (0, 1)), "memory changed on the device"
            with pytest.raises(EngineError):  # nothing of the move left at home
                await engine_a.inspect_container(name)
    finally:
        try:
            await engine_a.remove_container(name, force=True)
        except EngineError:
            pass


def _agent_back(device: Arm64Device) -> None:
    wait_for(lambda: device.adb_shell("systemctl is-active androcond-agent.service || true").strip() == "active",
             timeout=60, interval=1, what="the device's agent restarted by systemd")


async def _home_cut_short(agent: AgentBed, device: Arm64Device, engine_a: Engine, image: str, directory: Path,
                          name: str, state: str, cut: Callable[[], None]) -> tuple[int, dict[str, Any], Counts]:
    """The heap program out on the device, then `cut` (blocking: run in a thread) as its way home enters `state`:
    the CLI's exit code and record once the move ended, the daemon still up; and each thread's last count on
    the device before."""
    end, _ = await _move(agent, device, engine_a, _heap(image, TUNABLES), name, directory, _counted(3))
    assert end["state"] == "done", end.get("detail")
    there = _on_the_device(device, name)
    config = daemon_config(agent, device, directory)
    daemon = DaemonProcess(config)
    try:
        await daemon.start()
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        asking = asyncio.create_task(migrate_by_cli(config, name, "host"))
        await daemon.wait_for_log(state_of(name, state), timeout=120)
        await asyncio.to_thread(cut)
        code, record = await asking
        assert daemon.proc is not None and daemon.proc.returncode is None, "the daemon runs on"
    finally:
        await daemon.kill()
        _agent_back(device)
    return code, record, there


async def _rolled_back(agent: AgentBed, device: Arm64Device, engine_a: Engine, image: str, directory: Path,
                       name: str, state: str, cut: Callable[[], None]) -> None:
    """Cut short before anything runs at home: rolled back, the container counting on on the device, the same
    process with the same memory, and nothing of the move left at home."""
    code, record, there = await _home_cut_short(agent, device, engine_a, image, directory, name, state, cut)
    assert code != 0 and record["state"] == "rolled-back", (record["state"], record.get("error"))
    await _exactly_once(record, device, engine_a, name, there)


@pytest.mark.parametrize("state", ["checkpointing", "streaming"])
async def test_the_device_s_agent_killed_on_the_way_home_leaves_it_counting_on_there(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str, state: str) -> None:
    """SIGKILL to the device's agent as the way home enters `state` (`checkpointing`: during the readout, with
    the guest stopped by the stub or the container paused; `streaming`: its pages going out, which cuts the
    link). Until systemd has it back nobody can settle the move; then the rollback unpauses the container, which
    counts on, the same process with the same memory, and nothing of the move is left at home."""
    def killed() -> None:
        arm64_device.adb_shell("systemctl kill --kill-whom=main -s KILL androcond-agent.service")

    await _rolled_back(agent_server, arm64_device, engine_a, emulated_image, tmp_path, on_device, state, killed)


def _unplugged(device: Arm64Device) -> None:
    """The link cut by itself, as a phone's cable pulled: adb drops the device (every connection through it
    ends), then it is plugged in again."""
    subprocess.run([ADB, "disconnect", device.adb_serial], capture_output=True, timeout=30, check=True)
    wait_for(lambda: device.adb_serial not in subprocess.run([ADB, "devices"], capture_output=True, timeout=30,
                                                             check=True).stdout.decode(),
             timeout=30, interval=0.2, what="the device gone from adb")
    wait_for(lambda: subprocess.run([ADB, "connect", device.adb_serial], capture_output=True, timeout=30,
                                    check=False).returncode == 0 and
             subprocess.run([ADB, "-s", device.adb_serial, "get-state"], capture_output=True, timeout=30,
                            check=False).stdout.decode().strip() == "device",
             timeout=60, interval=1, what="the device back on adb")


@pytest.mark.parametrize("state", ["checkpointing", "streaming"])
async def test_the_link_cut_on_the_way_home_leaves_it_counting_on_the_device(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str, state: str) -> None:
    """The adb link cut as the way home enters `state` (the readout; its pages going out), the agent alive: the
    move fails where it is, and once the device is back the rollback unpauses the container there — the same
    process with the same memory, counting on — and nothing of the move is left at home."""
    await _rolled_back(agent_server, arm64_device, engine_a, emulated_image, tmp_path, on_device, state,
                       lambda: _unplugged(arm64_device))


async def test_the_link_cut_while_it_restores_at_home_ends_exactly_once(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str) -> None:
    """The adb link cut as the way home enters `restoring` (the restorer runs at home; the device holds the
    paused container): it ends with the program running once — at home, counting on, its copy on the device
    removed once the device is back; or back on the device, counting on, with nothing left at home — and the
    daemon up."""
    _code, record, there = await _home_cut_short(agent_server, arm64_device, engine_a, emulated_image, tmp_path,
                                                 on_device, "restoring", lambda: _unplugged(arm64_device))
    await _exactly_once(record, arm64_device, engine_a, on_device, there)


def _fetch_at_home() -> str:
    fetched = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{HTTP_PORT}/"],
                             capture_output=True, timeout=30, check=False)
    return fetched.stdout.decode()


async def test_a_server_comes_home_listening_on_its_port_with_its_state(
        testbed: TestBed, arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str,
        tmp_path: Path, on_device: str) -> None:
    """The http program (one listening socket, its hit count in memory): asked twice at the source, once on the
    device, then brought home, where its listening socket is made afresh on the same port and the same process
    answers on — its fourth hit, its token."""
    token = await _http_on_device(testbed, agent_server, arm64_device, engine_a, emulated_image, on_device, tmp_path)
    assert _fetch_through_adb(arm64_device, HTTP_PORT) == f"hits 3 token {token}\n"
    try:
        code, record = await _home(agent_server, arm64_device, tmp_path, on_device)
        assert code == 0 and record["state"] == "done", (record["state"], record.get("error"))
        # From the host's published port, as its users reach it at home.
        answer = ""
        for _ in range(100):
            answer = _fetch_at_home()
            if answer:
                break
            await asyncio.sleep(0.2)
        assert answer == f"hits 4 token {token}\n", answer
        inspect = await engine_a.inspect_container(on_device)
        assert [b["HostPort"] for b in inspect["HostConfig"]["PortBindings"]["8080/tcp"]] == [str(HTTP_PORT)]
        # One thread: the guest was asked for its signal state. Its SIGUSR1 handler and its blocked SIGUSR2
        # came along (as its container's PID 1 a default action would end nothing: the mask is read off the
        # kernel); its accept restarts after the handler, and it answers on.
        readout = str((record.get("adjusted") or {}).get("(readout)"))
        assert "signal" not in readout, readout
        assert _blocked(inspect["State"]["Pid"])[inspect["State"]["Pid"]] & (USR1 | USR2) == USR2
        testbed.engine_a.cli("kill", "-s", "USR1", on_device)
        wait_for(lambda: "signal usr1" in testbed.engine_a.cli("logs", on_device), timeout=60, interval=0.5,
                 what="its SIGUSR1 handler's line")
        assert _fetch_at_home() == f"hits 5 token {token}\n"
    finally:
        try:
            await engine_a.remove_container(on_device, force=True)
        except EngineError:
            pass




async def test_it_goes_out_and_comes_home_again(
        testbed: TestBed, arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str,
        tmp_path: Path, on_device: str) -> None:
    """Twice there and back: the container rebuilt at home by the restorer is checkpointed by CRIU, moved out
    under emulation again (a plan made from that dump), read out of the emulator again and rebuilt at home
    again — one file, each thread's counts consecutive from 1 across the five runs, the memory unchanged."""
    there = await _out_writing_a_file(testbed, agent_server, arm64_device, engine_a, emulated_image, on_device,
                                      tmp_path)
    try:
        for trip in ("first", "second"):
            code, record = await _home(agent_server, arm64_device, tmp_path, on_device)
            assert code == 0 and record["state"] == "done", (trip, record["state"], record.get("error"))
            await _counting_on_in_the_file(testbed.engine_a, on_device, there, f"at home, {trip} time")
            _rebuilt_natively((await engine_a.inspect_container(on_device))["State"]["Pid"])
            assert "No such" in _device_state(arm64_device, on_device) or not _device_state(arm64_device, on_device)
            if trip == "first":
                home = _home_counts(testbed.engine_a, on_device)
                code, record = await _home(agent_server, arm64_device, tmp_path, on_device, to="arm64")
                assert code == 0 and record["state"] == "done", (record["state"], record.get("error"))
                there = _on_the_device(arm64_device, on_device, more_than=home, read=_device_file)
                for role in (0, 1):
                    assert there[role][1] == home[role][1], "memory changed on the way out again"
    finally:
        try:
            await engine_a.remove_container(on_device, force=True)
        except EngineError:
            pass
