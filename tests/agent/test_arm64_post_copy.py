"""Post-copy across ISAs: the two-ISA program with 64 MB of touched memory goes x86_64 → the arm64 device with
`lazy = true`. It resumes on aarch64 before its memory has arrived (the page server serves the recoded images
over the link), counts on, and every page of its memory reads on the device as it was written on x86_64. A link
cut while the pages arrive rolls back to the source: the container counts on there, once, and nothing of it is
left on the device."""

from __future__ import annotations

import base64
from pathlib import Path

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
from .test_post_copy import page_servers_alive, states

pytestmark = ARM64_MARKS

MB = 64
LAZY = "lazy = true\n"

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

    def gone() -> bool:
        return on_device not in arm64_device.adb_shell("docker ps -a --format '{{.Names}}'", timeout=120)

    wait_for(gone, timeout=120, interval=1, what="the device's partial container removed")
    assert lazy_pages_running(arm64_device) == ""
    assert page_servers_alive() == []
