"""What the benchmarks onto the arm64 device share: the bed, the arm64 device (booted here, or the one named by
ANDROCOND_ARM64_ATTACH, the JSON line of `python -m tests.testbed.arm64 boot`), an agent on the bed's x86_64
device as `pixel` (the same-ISA baseline) and a daemon that knows both. Everything it started is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import TestBed
from tests.testbed.agent import DeviceAgent, daemon_config
from tests.testbed.arm64 import Arm64Device, ensure_image
from tests.testbed.proc import wait_for
from tests.testbed.twoisa import arm64_device_table


@dataclass
class Arm64Bench:
    bed: TestBed
    device: Arm64Device
    # The daemon's: devices `pixel`, `arm64`, `arm64-lazy` (the same, with post-copy) and `arm64-flat` (post-copy
    # from the flat freeze, both ways).
    config: Path


@contextmanager
def arm64_bench(work: Path, agent_port: int, label: str) -> Iterator[Arm64Bench]:
    """`label`: the containers the benchmark starts carry `<label>=1`; they are removed on both engines."""
    bed = TestBed().up()
    attach = os.environ.get("ANDROCOND_ARM64_ATTACH")
    device = Arm64Device.attached(attach) if attach else Arm64Device(work / "arm64", ensure_image()).up()
    agent = DeviceAgent(bed, work, agent_port)
    config = daemon_config(agent, work, daemon=f'api = "unix:{work / "api.sock"}"\nlog_level = "warning"',
                           extra=arm64_device_table(device, work) +
                           arm64_device_table(device, work, name="arm64-lazy", extra="lazy = true") +
                           arm64_device_table(device, work, name="arm64-flat", extra='lazy = true\nfreeze = "flat"') +
                           "[timeouts]\nconnect = 60\n")
    agent.start()
    daemon = subprocess.Popen([sys.executable, "-m", "androcond", "run", "--config", str(config)],
                              stderr=(work / "daemon.log").open("wb"))
    try:
        wait_for((work / "api.sock").exists, timeout=30, what="daemon API")
        yield Arm64Bench(bed, device, config)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        agent.stop()
        bed.engine_a.remove_containers(f"{label}=1")
        bed.engine_b.remove_containers(f"{label}=1")
        if not attach:
            device.down()
