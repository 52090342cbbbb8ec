"""Across ISAs and back, for real: the two-ISA program (the stand-in for a Popcorn binary) goes x86_64 → the
arm64 device by its label, then `androcond migrate NAME --to host` brings it home: the device's agent notifies
its task for x86_64 and freezes it, the daemon recodes the aarch64 dump for this host (the x86_64 registers the
runtime left, the host's own vdso, `<bin>_x86-64` at `<bin>` again) and the host restores it in place; it says
it resumes on x86_64 and counts on. A fault after the device froze it leaves it counting on the device.

Post-copy back across ISAs (`lazy = true`, `freeze = "flat"` in the device's table): the device dumps all but the
memory, the daemon recodes that for x86_64, the host resumes the program at once, and the device's paused tasks
serve its pages; a link cut while they arrive unpauses the same process on the device."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine

from ..helpers import DaemonProcess
from ..testbed import TestBed
from ..testbed.arm64 import Arm64Device
from ..testbed.engines import DOCKER_CLI
from ..testbed.proc import run, wait_for
from ..testbed.twoisa import BIN, install_twoisa_image
from .arm64_bed import ARM64_MARKS
from .conftest import AgentBed
from .daemon_bed import finished, migrate_by_cli, running, state_of
from .test_arm64_post_copy import MB, MEMORY_CHECK, flat_move, gone_from, lazy_pages_running
from .test_cross_isa_resume import LOG, daemon_config, device_log, log_lines, move_out, on_device, twoisa_image
from .test_daemon_faults import injected
from .test_post_copy import exists, keepers_alive, states

pytestmark = ARM64_MARKS
__all__ = ["on_device", "twoisa_image"]  # the fixtures, shared with the way out's tests

Line = tuple[str, int, str, int]


async def _out_and_counting_on_aarch64(agent: AgentBed, device: Arm64Device, engine: Engine, image: str, name: str,
                                       directory: Path, *args: str) -> int:
    """Moved to the arm64 device by its label (`args`: the program's after its log file); the last count it told
    there once it counted on."""
    end, _, _ = await move_out(agent, device, engine, image, name, directory, *args)
    assert end["state"] == "done", end.get("detail")
    return _counted_on_aarch64(device, name)


def _counted_on_aarch64(device: Arm64Device, name: str) -> int:
    """Once it told three counts on the device: the last of them."""

    def counted_on() -> bool:
        return sum(1 for line in device_log(device, name) if line[2] == "aarch64") >= 3

    wait_for(counted_on, timeout=120, interval=1, what="counting on the device")
    return max(n for kind, n, isa, _ in device_log(device, name) if kind == "count" and isa == "aarch64")


def _home_log(engine_a_host: str, name: str) -> list[Line]:
    return log_lines(run([DOCKER_CLI, "-H", engine_a_host, "exec", name, "cat", LOG]).stdout.decode())


def _counting_on_at_home(engine_a_host: str, name: str, on_arm: int) -> list[Line]:
    """Once it counts on x86_64 at home past what it told on aarch64: role 0's log, from its start."""

    def resumed_home() -> bool:
        return any(kind == "count" and isa == "x86_64" and n > on_arm
                   for kind, n, isa, _ in _home_log(engine_a_host, name))

    wait_for(resumed_home, timeout=60, interval=0.5, what="counting on at home")
    return [line for line in _home_log(engine_a_host, name) if line[3] == 0]


def _counting_on_aarch64_past(device: Arm64Device, name: str, at: int) -> list[Line]:
    """Once it counts on the device 3 past `at`: role 0's log there, from its start."""

    def counts_on() -> bool:
        return any(kind == "count" and isa == "aarch64" and n >= at + 3 for kind, n, isa, _ in device_log(device, name))

    wait_for(counts_on, timeout=120, interval=1, what="counting on the device again")
    return [line for line in device_log(device, name) if line[3] == 0]


async def _home(daemon: DaemonProcess, config: Path, name: str) -> tuple[int, dict[str, Any]]:
    await daemon.start()
    await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
    return await migrate_by_cli(config, name, "host")


async def test_x86_64_to_aarch64_and_back_counts_on(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str, tmp_path: Path,
        on_device: str) -> None:
    bed = agent_server.bed
    try:
        on_arm = await _out_and_counting_on_aarch64(agent_server, arm64_device, engine_a, twoisa_image, on_device,
                                                    tmp_path)
        config = daemon_config(agent_server, arm64_device, tmp_path)
        daemon = DaemonProcess(config)
        try:
            code, record = await _home(daemon, config, on_device)
            assert code == 0 and record["state"] == "done", (record["state"], record.get("error"))
            assert (record["from"], record["to"]) == ("arm64", "host"), record
            timings = record.get("timings")
            assert isinstance(timings, dict) and {"notify_s", "recode_s"} <= set(timings), record
        finally:
            await daemon.kill()

        story = _counting_on_at_home(bed.engine_a.host, on_device, on_arm)
        resumes = [(i, n, isa) for i, (kind, n, isa, _) in enumerate(story) if kind == "resumed at count"]
        assert [isa for _, _, isa in resumes] == ["aarch64", "x86_64"], story
        at, count, _ = resumes[1]
        arm_counts = [n for kind, n, isa, _ in story[:at] if kind == "count" and isa == "aarch64"]
        # Frozen between telling a count and storing it, the other ISA tells that count again.
        assert count in (arm_counts[-1], arm_counts[-1] - 1), (count, arm_counts[-3:])
        after = [(n, isa) for kind, n, isa, _ in story[at + 1:] if kind == "count"]
        assert after[0] == (count + 1, "x86_64") and [n for n, _ in after] == list(range(count + 1,
                                                                                          count + 1 + len(after)))
        logs = await engine_a.container_logs(on_device)
        assert f"resumed at count {count} on x86_64" in logs, logs[-400:]
        # Exactly once: the device's copy is gone, and at home it is the x86_64 build at <bin> again.
        assert gone_from(arm64_device, on_device)
        home = await engine_a.inspect_container(on_device)
        assert home["Config"]["Cmd"] == [f"/bin/{BIN}", LOG]
        exe = run([DOCKER_CLI, "-H", bed.engine_a.host, "exec", on_device, "sh", "-c",
                   f"cmp /bin/{BIN} /bin/{BIN}_x86-64 && echo same"]).stdout.decode()
        assert exe.strip() == "same"
    finally:
        bed.engine_a.cli("rm", "-f", on_device, check=False)


async def test_a_fault_after_the_device_froze_it_leaves_it_counting_on_aarch64(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str, tmp_path: Path,
        on_device: str) -> None:
    bed = agent_server.bed
    try:
        on_arm = await _out_and_counting_on_aarch64(agent_server, arm64_device, engine_a, twoisa_image, on_device,
                                                    tmp_path)
        config = daemon_config(agent_server, arm64_device, tmp_path)
        daemon = DaemonProcess(config, env={**os.environ, "ANDROCOND_INJECT_FAULT": f"stream@{on_device}"})
        try:
            code, record = await _home(daemon, config, on_device)
            assert code != 0 and record["state"] == "rolled-back", record
            assert "injected fault" in str(record["error"])
        finally:
            await daemon.kill()
        assert not await running(engine_a, on_device)

        story = _counting_on_aarch64_past(arm64_device, on_device, on_arm)
        assert [isa for kind, _, isa, _ in story if kind == "resumed at count"] == ["aarch64"], \
            "rolled back from the device's own checkpoint, not restarted and not resumed elsewhere"
        arm = [n for kind, n, isa, _ in story if kind == "count" and isa == "aarch64"]
        assert len(set(arm)) >= len(arm) - 1 and arm == sorted(arm), "counting on, not from the start"
    finally:
        bed.engine_a.cli("rm", "-f", on_device, check=False)


FLAT = 'lazy = true\nfreeze = "flat"\n'


def _device_started_at(device: Arm64Device, name: str) -> str:
    return device.adb_shell(f"docker inspect -f '{{{{.State.StartedAt}}}}' {name}", timeout=120).strip()


def _bad_pages_at_home(pid: int) -> str:
    """The memory check of the arm64 post-copy test, run here on the home copy's process."""
    return run([sys.executable, "-c", MEMORY_CHECK, str(pid), str(MB)]).stdout.decode().strip()


async def _home_from_flat_freeze(agent: AgentBed, device: Arm64Device, directory: Path,
                                 name: str) -> tuple[DaemonProcess, dict[str, Any]]:
    """Home with post-copy from the device's flat freeze: the daemon (killed once the move ended) and the move's
    record. The device was checkpointed by its lazy dump, with less than the memory in its images."""
    config = daemon_config(agent, device, directory, extra=FLAT)
    daemon = DaemonProcess(config)
    try:
        code, record = await _home(daemon, config, name)
        assert code == 0 and record["state"] == "done", (record["state"], record.get("error"))
        frozen = next(e for e in daemon.lines if e.get("msg") == "checkpointed on the device")
        assert frozen["via"] == "lazy-dump" and frozen["bytes"] < MB * 2**20, frozen
    finally:
        await daemon.kill()
    return daemon, record


async def _counting_on_at_home_with_every_page(agent: AgentBed, engine_a: Engine, name: str, on_arm: int) -> None:
    """Resumed on aarch64 and then on x86_64 at home, counting on, every page as aarch64 left it (and x86_64 first
    wrote it)."""
    story = _counting_on_at_home(agent.bed.engine_a.host, name, on_arm)
    assert [isa for kind, _, isa, _ in story if kind == "resumed at count"] == ["aarch64", "x86_64"], story
    pid = int((await engine_a.inspect_container(name))["State"]["Pid"])
    assert _bad_pages_at_home(pid) == "0"


async def test_post_copy_back_across_isas_resumes_home_before_the_memory_arrives(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str, tmp_path: Path,
        on_device: str) -> None:
    bed = agent_server.bed
    try:
        on_arm = await _out_and_counting_on_aarch64(agent_server, arm64_device, engine_a, twoisa_image, on_device,
                                                    tmp_path, "0", str(MB))
        daemon, record = await _home_from_flat_freeze(agent_server, arm64_device, tmp_path, on_device)
        assert states(daemon, on_device)[-3:] == ["restoring", "paging", "done"]
        # The memory came after the resume, from the device's tasks.
        assert record["bytes_sent"] >= MB * 2**20, record
        timings = record["timings"]
        assert isinstance(timings, dict) and {"notify_s", "recode_s"} <= set(timings), record
        assert timings["downtime_s"] == timings["resumed_s"] <= timings["last_page_s"], timings
        assert any(e.get("msg", "").startswith("the device's lazy dump ended") for e in daemon.lines)
        await _counting_on_at_home_with_every_page(agent_server, engine_a, on_device, on_arm)
        assert gone_from(arm64_device, on_device)
        assert lazy_pages_running(arm64_device) == "" and keepers_alive() == []
    finally:
        bed.engine_a.cli("rm", "-f", on_device, check=False)


@pytest.fixture(scope="module")
def twoisa_bss_image(testbed: TestBed, arm64_device: Arm64Device, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The build whose regs_dst and tls_dst lie in .bss, as a C runtime's plain globals do."""
    return install_twoisa_image(testbed.engine_a, arm64_device, tmp_path_factory.mktemp("twoisa-bss"),
                                regset_in_bss=True)


async def test_registers_in_bss_go_out_and_home_with_flat_freezes(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_bss_image: str, tmp_path: Path,
        on_device: str) -> None:
    """A runtime that keeps regs_dst/tls_dst in .bss (anonymous memory, which a lazy dump leaves to post-copy): the
    recode takes the registers the notify read at the migration point, on the host on the way out and on the
    device on the way home, and neither freeze dumps the memory."""
    bed = agent_server.bed
    try:
        out, _counted, record, _began = await flat_move(agent_server, arm64_device, engine_a, twoisa_bss_image,
                                                        on_device, tmp_path)
        assert record["state"] == "done", (record["state"], record.get("error"))
        frozen = next(e for e in out.lines if e.get("msg") == "checkpointed")
        assert frozen["via"] == "lazy-dump", frozen
        assert record["bytes_sent"] >= MB * 2**20, "the memory came after the resume"
        on_arm = _counted_on_aarch64(arm64_device, on_device)

        await _home_from_flat_freeze(agent_server, arm64_device, tmp_path, on_device)
        await _counting_on_at_home_with_every_page(agent_server, engine_a, on_device, on_arm)
        assert gone_from(arm64_device, on_device)
    finally:
        bed.engine_a.cli("rm", "-f", on_device, check=False)


async def test_a_link_cut_while_pages_come_home_unpauses_the_device_s_tasks(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str, tmp_path: Path,
        on_device: str) -> None:
    """Cut at `paging`, resumed at home with its memory on the way: the device's dump is reset, its tasks go back
    to paused, the home copy is removed, and the rollback unpauses them — the same process (its start time
    unchanged) counting on aarch64, never resumed elsewhere."""
    bed = agent_server.bed
    try:
        on_arm = await _out_and_counting_on_aarch64(agent_server, arm64_device, engine_a, twoisa_image, on_device,
                                                    tmp_path, "0", str(MB))
        began = _device_started_at(arm64_device, on_device)
        config = daemon_config(agent_server, arm64_device, tmp_path, extra=FLAT)
        daemon = DaemonProcess(config, env=injected("paging", on_device))
        try:
            code, record = await _home(daemon, config, on_device)
            assert code != 0 and record["state"] == "rolled-back", record
            assert "paging" in states(daemon, on_device)
        finally:
            await daemon.kill()
        assert not await exists(engine_a, on_device), "the home copy is removed"

        story = _counting_on_aarch64_past(arm64_device, on_device, on_arm)
        assert _device_started_at(arm64_device, on_device) == began, "restored from a checkpoint, not unpaused"
        assert [isa for kind, _, isa, _ in story if kind == "resumed at count"] == ["aarch64"], story
        arm = [n for kind, n, isa, _ in story if kind == "count" and isa == "aarch64"]
        assert arm == sorted(arm) and len(set(arm)) >= len(arm) - 1, "counting on, not from the start"
        assert keepers_alive() == []
    finally:
        bed.engine_a.cli("rm", "-f", on_device, check=False)


def _device_paused(device: Arm64Device, name: str) -> bool:
    return device.adb_shell(f"docker inspect -f '{{{{.State.Paused}}}}' {name}", timeout=120).strip() == "true"


def _paused_log(device: Arm64Device, name: str) -> list[Line]:
    """The program's log read through its root from the device's side (`docker exec` refuses a paused one)."""
    pid = device.adb_shell(f"docker inspect -f '{{{{.State.Pid}}}}' {name}", timeout=120).strip()
    return log_lines(device.adb_shell(f"cat /proc/{pid}/root{LOG}", timeout=120))


def _device_dump_alive(device: Arm64Device) -> bool:
    return bool(device.adb_shell("pgrep -f '[c]heckpoint --lazy-pages' || true", timeout=120).strip())


async def test_the_daemon_killed_while_pages_come_home_leaves_the_device_s_tasks_frozen_under_cgroup_v2(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str, tmp_path: Path,
        on_device: str) -> None:
    """The arm64 device's engine runs on cgroup v2 (the x86_64 bed is v1): its freezer is the one that must hold
    the tasks. SIGKILL to the daemon at `paging`: the device's agent sees its session end and resets the dump;
    CRIU puts the tasks back as they were, paused, and they stay so (not counting) until the restarted daemon
    settles the move and unpauses them — the same process, counting on aarch64."""
    bed = agent_server.bed
    assert arm64_device.adb_shell("stat -fc %T /sys/fs/cgroup", timeout=120).strip() == "cgroup2fs"
    try:
        await _out_and_counting_on_aarch64(agent_server, arm64_device, engine_a, twoisa_image, on_device, tmp_path,
                                           "0", str(MB))
        began = _device_started_at(arm64_device, on_device)
        config = daemon_config(agent_server, arm64_device, tmp_path, extra=FLAT)
        daemon = DaemonProcess(config)
        await daemon.start()
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        move = asyncio.create_task(migrate_by_cli(config, on_device, "host"))
        try:
            await daemon.wait_for_log(state_of(on_device, "paging"), timeout=300)
            await daemon.kill()
            await asyncio.gather(move, return_exceptions=True)
        finally:
            await daemon.kill()
            await asyncio.gather(move, return_exceptions=True)
        wait_for(lambda: not _device_dump_alive(arm64_device), timeout=120, interval=1,
                 what="the device's lazy dump reset")
        assert _device_paused(arm64_device, on_device), "CRIU let the tasks go instead of back to paused"
        before = [n for kind, n, _isa, _ in _paused_log(arm64_device, on_device) if kind == "count"]
        await asyncio.sleep(3.0)  # what is watched is that nothing happens: fifteen of the program's ticks
        after = [n for kind, n, _isa, _ in _paused_log(arm64_device, on_device) if kind == "count"]
        assert after == before, "the device's tasks ran before the daemon's word"
        assert _device_paused(arm64_device, on_device)
        again = DaemonProcess(config)
        await again.start()
        try:
            end = await finished(again, on_device, timeout=300)
            assert end["state"] == "rolled-back", end
        finally:
            await again.kill()
        assert not await exists(engine_a, on_device), "the home copy is removed"

        story = _counting_on_aarch64_past(arm64_device, on_device, max(before))
        assert not _device_paused(arm64_device, on_device)
        assert _device_started_at(arm64_device, on_device) == began, "restored from a checkpoint, not unpaused"
        assert [isa for kind, _, isa, _ in story if kind == "resumed at count"] == ["aarch64"], story
    finally:
        bed.engine_a.cli("rm", "-f", on_device, check=False)
