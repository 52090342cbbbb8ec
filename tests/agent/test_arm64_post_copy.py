"""Post-copy across ISAs: the two-ISA program with 64 MB of touched memory goes x86_64 → the arm64 device with
`lazy = true`. It resumes on aarch64 before its memory has arrived (the page server serves the recoded images
over the link), counts on, and every page of its memory reads on the device as it was written on x86_64. A link
cut while the pages arrive rolls back to the source: the container counts on there, once, and nothing of it is
left on the device.

With `freeze = "flat"` too, no memory is dumped at all: the recoded lazy dump goes to the device, and the source's
paused tasks serve the pages; a link cut then unpauses the same process at the source."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from androcond.engine import Engine

from ..helpers import DaemonProcess
from ..testbed.arm64 import Arm64Device
from ..testbed.bed import TEST_LABEL, TEST_RUN
from ..testbed.proc import wait_for
from ..testbed.twoisa import BIN
from .arm64_bed import ARM64_MARKS
from .conftest import AgentBed
from .daemon_bed import migrate_by_cli, running
from .test_cross_isa_resume import (
    LOG,
    assert_counting_at_source,
    assert_resumed,
    counting_on_x86,
    daemon_config,
    device_log,
    move_out,
    on_device,  # noqa: F401 (a fixture)
    twoisa_image,  # noqa: F401 (a fixture)
)
from .test_daemon_faults import injected
from .test_flat_freeze import lazy_dumps_alive, started_at
from .test_post_copy import exists, page_servers_alive, states

pytestmark = ARM64_MARKS

MB = 64
LAZY = "lazy = true\n"
FLAT = 'lazy = true\nfreeze = "flat"\n'

# Reads the program's memory through /proc/PID/mem on the device: the mapping of MB megabytes whose page i holds
# (i | 1) & 0xff in its first byte, as the program wrote it on x86_64. Prints the pages that differ.
MEMORY_CHECK = """
import sys
pid, size = int(sys.argv[1]), int(sys.argv[2]) << 20
best = None
with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
    for line in maps:
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if len(fields) > 5 or end - start < size or not fields[1].startswith("rw"):
            continue
        for base in {start, end - size}:  # a neighbour may have merged into it, below or above
            bad = 0
            for i in range(size >> 12):
                mem.seek(base + (i << 12))
                bad += mem.read(1)[0] != ((i | 1) & 0xFF)
            best = bad if best is None else min(best, bad)
print("no mapping" if best is None else best)
"""


def bad_pages(device: Arm64Device, name: str) -> str:
    pid = device.adb_shell(f"docker inspect -f '{{{{.State.Pid}}}}' {name}", timeout=120).strip()
    encoded = base64.b64encode(MEMORY_CHECK.encode()).decode()
    return device.adb_shell(f'python3 -c "$(echo {encoded} | base64 -d)" {pid} {MB}', timeout=300).strip()


def lazy_pages_running(device: Arm64Device) -> str:
    return device.adb_shell("pgrep -f '[c]riu lazy-pages' || true", timeout=120).strip()


def gone_from(device: Arm64Device, name: str) -> bool:
    return name not in device.adb_shell("docker ps -a --format '{{.Names}}'", timeout=120)


async def test_a_two_isa_container_resumes_before_its_memory_arrives(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str,  # noqa: F811
        tmp_path: Path, on_device: str) -> None:  # noqa: F811
    daemon = DaemonProcess(daemon_config(agent_server, arm64_device, tmp_path, extra=LAZY))
    await daemon.start()
    try:
        cid = await engine_a.create_container(
            {"Image": twoisa_image, "Cmd": [f"/bin/{BIN}", LOG, "0", str(MB)], "Labels": {TEST_LABEL: TEST_RUN}},
            name=on_device)
        await engine_a.start_container(cid)
        await counting_on_x86(engine_a, on_device, roles=1)  # meanwhile the daemon opens its API
        code, record = await migrate_by_cli(daemon.config, on_device, device="arm64")
        assert (code, record["state"]) == (0, "done"), record
        assert states(daemon, on_device)[-3:] == ["restoring", "paging", "done"]
        split = next(e for e in daemon.lines if e.get("msg") == "post-copy: pages left to the page server")
        assert split["lazy_bytes"] >= MB * 2**20, split  # the memory came after the resume
        # The device's CRIU (4.1) speaks 24-byte page headers, the host's (4.2) 32: the relay rewrote them.
        server = next(e for e in daemon.lines if e.get("msg") == "page server started")
        assert server["rewriting"] == "24-byte headers", server
        timings = record["timings"]
        assert timings["downtime_s"] == timings["resumed_s"] <= timings["last_page_s"], timings
        assert timings["recode_s"] > 0, "recoded for aarch64"
        assert not await running(engine_a, on_device)
    finally:
        await daemon.kill()
    assert page_servers_alive() == []

    def counted_on() -> bool:
        return sum(1 for line in device_log(arm64_device, on_device) if line[2] == "aarch64") >= 3

    wait_for(counted_on, timeout=120, interval=1, what="counting on the device")
    assert assert_resumed(device_log(arm64_device, on_device), role=0) >= 3
    # Every page arrived, and as x86_64 left it.
    assert bad_pages(arm64_device, on_device) == "0"
    assert lazy_pages_running(arm64_device) == "", "lazy-pages still runs after the last page"


async def test_a_link_cut_while_pages_arrive_rolls_back_to_the_source(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str,  # noqa: F811
        tmp_path: Path, on_device: str) -> None:  # noqa: F811
    """The daemon fails right after the device says the container resumed (injected at `paging`): its connection
    closes mid-paging. The device removes its container; the daemon restores the source from its dump."""
    end, lines, counted = await move_out(agent_server, arm64_device, engine_a, twoisa_image, on_device, tmp_path,
                                         "0", str(MB), fault="paging", extra=LAZY)
    assert end["state"] == "rolled-back", end.get("detail")
    assert "paging" in [e["state"] for e in lines if e.get("msg") == "migration state"]
    await assert_counting_at_source(engine_a, on_device, counted)

    wait_for(lambda: gone_from(arm64_device, on_device), timeout=120, interval=1,
             what="the device's partial container removed")
    assert lazy_pages_running(arm64_device) == ""
    assert page_servers_alive() == []


async def flat_move(agent: AgentBed, device: Arm64Device, engine: Engine, image: str, name: str,
                     directory: Path, fault: str = "") -> tuple[DaemonProcess, int, dict[str, Any], str]:
    """The program with MB megabytes counting on x86_64, moved with the flat freeze (`fault` injected): the daemon
    (killed), its last x86_64 count before the move, the migration's record, and its start time at the source."""
    env = injected(fault, name) if fault else None
    daemon = DaemonProcess(daemon_config(agent, device, directory, extra=FLAT), env=env)
    await daemon.start()
    try:
        cid = await engine.create_container(
            {"Image": image, "Cmd": [f"/bin/{BIN}", LOG, "0", str(MB)], "Labels": {TEST_LABEL: TEST_RUN}},
            name=name)
        await engine.start_container(cid)
        counted = await counting_on_x86(engine, name, roles=1)
        began = await started_at(engine, name)
        _code, record = await migrate_by_cli(daemon.config, name, device="arm64")
        return daemon, counted, record, began
    finally:
        await daemon.kill()


async def test_the_flat_freeze_across_isas_serves_the_memory_from_the_frozen_tasks(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str,  # noqa: F811
        tmp_path: Path, on_device: str) -> None:  # noqa: F811
    """Notified for aarch64, paused and dumped without its memory: the recoded images go to the device, which
    resumes the program and takes every page from the source's frozen tasks."""
    daemon, _counted, record, _began = await flat_move(agent_server, arm64_device, engine_a, twoisa_image,
                                                        on_device, tmp_path)
    assert record["state"] == "done", record
    assert states(daemon, on_device)[-3:] == ["restoring", "paging", "done"]
    frozen = next(e for e in daemon.lines if e.get("msg") == "checkpointed")
    assert frozen["via"] == "lazy-dump", frozen
    # Nothing of the memory was in the images: every page came after the resume, from the tasks.
    split = next(e for e in daemon.lines if e.get("msg") == "post-copy: pages left to the page server")
    assert split["lazy_bytes"] < 2**20, split
    assert record["bytes_sent"] >= MB * 2**20, record
    assert record["timings"]["recode_s"] > 0, "recoded for aarch64"
    assert any(e.get("msg", "").startswith("the lazy dump ended: ") for e in daemon.lines)
    assert not any("did not end cleanly" in e.get("msg", "") for e in daemon.lines)
    assert not await exists(engine_a, on_device), "the source's tasks went with the confirmed dump"
    assert lazy_dumps_alive() == []

    def counted_on() -> bool:
        return sum(1 for line in device_log(arm64_device, on_device) if line[2] == "aarch64") >= 3

    wait_for(counted_on, timeout=120, interval=1, what="counting on the device")
    assert assert_resumed(device_log(arm64_device, on_device), role=0) >= 3
    assert bad_pages(arm64_device, on_device) == "0"
    assert lazy_pages_running(arm64_device) == ""


async def test_a_link_cut_while_pages_arrive_unpauses_the_notified_source(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, twoisa_image: str,  # noqa: F811
        tmp_path: Path, on_device: str) -> None:  # noqa: F811
    """The flat freeze across ISAs cut at `paging`: the dump's connection is reset, the source's tasks go back to
    paused, the device removes its copy, and the rollback unpauses them: the same process (its start time
    unchanged), counting on x86_64 from where it was."""
    daemon, counted, record, began = await flat_move(agent_server, arm64_device, engine_a, twoisa_image,
                                                      on_device, tmp_path, fault="paging")
    assert record["state"] == "rolled-back", record
    assert "paging" in states(daemon, on_device)
    assert next(e for e in daemon.lines if e.get("msg") == "checkpointed")["via"] == "lazy-dump"
    await assert_counting_at_source(engine_a, on_device, counted)
    assert await started_at(engine_a, on_device) == began, "restored from a checkpoint, not unpaused"
    assert not (await engine_a.inspect_container(on_device))["State"]["Paused"]
    wait_for(lambda: gone_from(arm64_device, on_device), timeout=120, interval=1,
             what="the device's partial container removed")
    assert lazy_pages_running(arm64_device) == ""
    assert lazy_dumps_alive() == []
