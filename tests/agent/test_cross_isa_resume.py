"""x86_64 → aarch64 for real: a container running the two-ISA program (tests/recoder/programs/twoisa/, the
stand-in for a Popcorn binary) is labelled on engine A and resumes on the arm64 device (a qemu-system-aarch64
guest, tests/testbed/arm64.py) with its count and its files; and when it cannot, it keeps running at the source.

The image carries the program three times, as H-Container images do: `<bin>` (the x86_64 build), `<bin>_x86-64`
and `<bin>_aarch64`. The device has an image of the same name whose busybox is aarch64 (so `docker exec` works
there) and whose `<bin>` is still the x86_64 build: the daemon must place `<bin>_aarch64` at `<bin>` itself.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine

from ..helpers import DaemonProcess
from ..testbed import TestBed
from ..testbed.arm64 import Arm64Device
from ..testbed.bed import TEST_LABEL, TEST_RUN
from ..testbed.proc import wait_for
from ..testbed.twoisa import BIN, arm64_device_table, install_twoisa_image
from .arm64_bed import ARM64_MARKS
from .conftest import AgentBed
from .daemon_bed import finished, running, write_daemon_config

pytestmark = ARM64_MARKS

LOG = "/data/count.log"
LINE = re.compile(r"^(count|resumed at count|started at count) (\d+) on (\w+) \(pid \d+, role (\d+)\)$")


@pytest.fixture(scope="module")
def twoisa_image(testbed: TestBed, arm64_device: Arm64Device, tmp_path_factory: pytest.TempPathFactory) -> str:
    return install_twoisa_image(testbed.engine_a, arm64_device, tmp_path_factory.mktemp("twoisa"))


@pytest.fixture
def on_device(arm64_device: Arm64Device, unique_name: str) -> Iterator[str]:
    """The container's name; whatever a migration left on the device under it is removed afterwards."""
    yield unique_name
    arm64_device.adb_shell(f"docker rm -f {unique_name} >/dev/null 2>&1 || true", timeout=120)


def daemon_config(agent: AgentBed, device: Arm64Device, directory: Path, *, android: bool = False,
                  extra: str = "") -> Path:
    """The daemon's config in `directory` (its state there too): the arm64 device over adb (`extra`: more lines
    of its table)."""
    table = arm64_device_table(device, directory, extra=('profile = "android"\n' if android else "") + extra)
    # The guest's CPU is emulated: generous deadlines.
    return write_daemon_config(agent, directory, extra=table + "[timeouts]\nconnect = 60\n")


async def move_out(agent: AgentBed, device: Arm64Device, engine: Engine, image: str, name: str, directory: Path,
                *args: str, roles: int = 1, android: bool = False, fault: str = "",
                extra: str = "") -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Start the program (`args` after its log file) labelled for the arm64 device, wait until each of its `roles`
    processes counted on x86_64, then start a daemon of its own (which moves it from its startup scan) and wait
    for the migration's end: its last state record, the daemon's log and the last x86_64 count of role 0 seen
    before the daemon started. With `android`, the Android profile applies on top of the recode; `fault` is
    injected in the daemon (ANDROCOND_INJECT_FAULT); `extra`: more lines of the device's table."""
    config = daemon_config(agent, device, directory, android=android, extra=extra)
    env = {**os.environ, "ANDROCOND_INJECT_FAULT": f"{fault}@{name}"} if fault else None
    daemon = DaemonProcess(config, env=env)
    try:
        labels = {TEST_LABEL: TEST_RUN, "androcond.migrate": "arm64", "androcond.delay": "2s"}
        cid = await engine.create_container(
            {"Image": image, "Cmd": [f"/bin/{BIN}", LOG, *args], "Labels": labels}, name=name)
        await engine.start_container(cid)
        counted = await counting_on_x86(engine, name, roles)
        await daemon.start()
        return await finished(daemon, name, timeout=300), daemon.lines, counted
    finally:
        await daemon.kill()


async def counting_on_x86(engine: Engine, name: str, roles: int, at_least: int = 4, timeout: float = 60) -> int:
    """Wait (polling its logs) until every role counted to at_least on x86_64: what the tests compare after the
    move was counted before the freeze (at 4 told, 3 is stored: a resume is at count 3 at least). The last count
    of role 0 seen."""
    async with asyncio.timeout(timeout):
        while True:
            lines = log_lines(await engine.container_logs(name))
            last = {role: max((n for kind, n, isa, r in lines if kind == "count" and isa == "x86_64" and r == role),
                              default=0) for role in range(roles)}
            if all(n >= at_least for n in last.values()):
                return last[0]
            await asyncio.sleep(0.1)


def log_lines(text: str) -> list[tuple[str, int, str, int]]:
    return [(m[1], int(m[2]), m[3], int(m[4])) for m in map(LINE.match, text.splitlines()) if m]


def device_log(device: Arm64Device, name: str) -> list[tuple[str, int, str, int]]:
    return log_lines(device.adb_shell(f"docker exec {name} cat {LOG}", timeout=120))


def assert_resumed(lines: list[tuple[str, int, str, int]], role: int) -> int:
    """One role's story in the log: counted on x86_64, resumed on aarch64 from that count, counting on."""
    mine = [line for line in lines if line[3] == role]
    x86 = [n for kind, n, isa, _ in mine if kind == "count" and isa == "x86_64"]
    resumed = [i for i, line in enumerate(mine) if line[0] == "resumed at count"]
    assert x86 and len(resumed) == 1, mine
    at = resumed[0]
    _, count, isa, _ = mine[at]
    assert isa == "aarch64"
    # Frozen between telling a count and storing it, the other ISA tells that count again.
    assert count in (x86[-1], x86[-1] - 1), f"resumed at {count} after x86_64 counted to {x86[-1]}"
    after = [(n, isa) for kind, n, isa, _ in mine[at + 1:] if kind == "count"]
    assert after and after[0] == (count + 1, "aarch64"), after[:3]
    assert [n for n, _ in after] == list(range(count + 1, count + 1 + len(after)))
    return count


async def test_a_two_isa_container_resumes_on_the_arm64_device(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str, tmp_path: Path,
        on_device: str) -> None:
    end, lines, _ = await move_out(agent_server, arm64_device, engine_a, twoisa_image, on_device, tmp_path)
    assert end["state"] == "done", end.get("detail")
    assert not await running(engine_a, on_device)
    recoded = [e for e in lines if e.get("msg") == "configuration adjusted" and e.get("by") == "recoder"]
    assert recoded and "seccomp" in recoded[0]["why"], "the dropped x86_64 seccomp filter is reported"
    sh = arm64_device.adb_shell
    assert sh(f"docker inspect -f '{{{{.State.Running}}}}' {on_device}", timeout=120).strip() == "true"
    assert sh(f"docker exec {on_device} uname -m", timeout=120).strip() == "aarch64"

    def counted_on() -> bool:
        return sum(1 for line in device_log(arm64_device, on_device) if line[2] == "aarch64") >= 3

    wait_for(counted_on, timeout=120, interval=1, what="counting on the device")
    resumed_at = assert_resumed(device_log(arm64_device, on_device), role=0)
    assert resumed_at >= 3, "resumed from the start, not from where x86_64 stopped"
    logs = sh(f"docker logs {on_device} 2>&1", timeout=120)
    assert f"resumed at count {resumed_at} on aarch64" in logs, logs[-500:]
    sh(f"docker stop -t 1 {on_device} >/dev/null", timeout=120)  # an ordinary container of the device's engine
    assert sh(f"docker inspect -f '{{{{.State.Running}}}}' {on_device}", timeout=120).strip() == "false"


async def test_a_parent_and_its_child_both_resume(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str, tmp_path: Path,
        on_device: str) -> None:
    """Two tasks of one binary, and the Android profile applied on top of the ISA recode."""
    end, _, _ = await move_out(agent_server, arm64_device, engine_a, twoisa_image, on_device, tmp_path, "1", roles=2,
                            android=True)
    assert end["state"] == "done", end.get("detail")

    def both_count_on() -> bool:
        lines = device_log(arm64_device, on_device)
        return all(sum(1 for line in lines if line[2] == "aarch64" and line[3] == role) >= 3 for role in (0, 1))

    wait_for(both_count_on, timeout=120, interval=1, what="parent and child counting on the device")
    lines = device_log(arm64_device, on_device)
    for role in (0, 1):
        assert_resumed(lines, role)
    processes = arm64_device.adb_shell(f"docker top {on_device} -o pid,args", timeout=120)
    assert processes.count(f"/bin/{BIN}") == 2, processes


async def assert_counting_at_source(engine: Engine, name: str, counted: int) -> None:
    """Running at the source, still on x86_64, its count going on past `counted` (the count seen before the move)
    and past where its log is now, without a restart."""
    async def x86_counts() -> list[int]:
        return [n for kind, n, isa, _ in log_lines(await engine.container_logs(name)) if kind == "count"
                and isa == "x86_64"]

    before = await x86_counts()
    target = max([counted, *before[-1:]]) + 3
    for _ in range(600):
        now = await x86_counts()
        if now and now[-1] >= target:
            break
        await asyncio.sleep(0.1)
    assert now and now[-1] >= target, "not counting at the source"
    assert counted in now, f"the source's log lost the count {counted} seen before the move"
    assert now == sorted(now) and len(set(now)) >= len(now) - 1, "the source restarted instead of continuing"
    assert await running(engine, name)


async def test_a_program_that_never_reaches_a_migration_point_stays_at_the_source(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str, tmp_path: Path,
        on_device: str) -> None:
    end, lines, counted = await move_out(agent_server, arm64_device, engine_a, twoisa_image, on_device, tmp_path,
                                      "0", "0", "stubborn")
    assert end["state"] == "rejected", end.get("detail")
    assert "did not reach a migration point" in end["detail"]
    assert not any(e.get("state") == "checkpointing" and e.get("container") == on_device for e in lines)
    await assert_counting_at_source(engine_a, on_device, counted)
    assert on_device not in arm64_device.adb_shell("docker ps -a --format '{{.Names}}'", timeout=120)


async def test_the_devices_criu_refusing_the_restore_rolls_back(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str, tmp_path: Path,
        on_device: str) -> None:
    """Injected (`wrong-exe`): the device keeps the x86_64 binary at `<bin>`; its own CRIU refuses to map it for
    the aarch64 task, and says why; the container goes on at the source."""
    end, _, counted = await move_out(agent_server, arm64_device, engine_a, twoisa_image, on_device, tmp_path,
                                  fault="wrong-exe")
    assert end["state"] == "rolled-back", end.get("detail")
    assert "restore refused by the device engine" in end["detail"]
    assert "CRIU: " in end["detail"], "CRIU's own reason is in the message"
    await assert_counting_at_source(engine_a, on_device, counted)
    assert on_device not in arm64_device.adb_shell("docker ps -a --format '{{.Names}}'", timeout=120)
