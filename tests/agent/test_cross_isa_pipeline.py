"""The daemon's x86_64 → aarch64 path on the real bed, as far as an x86_64 machine can take it: preflight on
the live container, the Popcorn notify, the freeze, the recode (from the container's layers, with the vdso the
device reported), the stream — then the device, which is really x86_64 (FakeAarch64, named as the stand-in
it is), refuses to restore aarch64 images, and the container is back at the source. A container that is no
Popcorn binary is refused before anything is frozen."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from androcond.engine import Engine

from ..helpers import DaemonProcess, counter_config, wait_for_count
from ..recoder.conftest import STANDIN, Builds
from ..testbed.bed import TEST_LABEL, TEST_RUN
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import faulty_agent, finished, running, write_daemon_config

pytestmark = pytest.mark.testbed


async def test_cross_isa_migration_runs_up_to_the_device_and_rolls_back(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, builds: Builds, recoder_image: str,
        tmp_path: Path, unique_name: str) -> None:
    agent = faulty_agent(agent_server, "fake-aarch64", AGENT_PORT + 5, tmp_path,
                         env={"ANDROCOND_TEST_VDSO": str(builds.vdso)})
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, port=agent.port,
                                               extra='profile = "android"'))
    await daemon.start()
    popcorn, plain = f"{unique_name}-popcorn", f"{unique_name}-plain"
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        labels = {TEST_LABEL: TEST_RUN, "androcond.migrate": "pixel", "androcond.delay": "1s"}
        cid = await engine_a.create_container({"Image": recoder_image, "Cmd": [f"/bin/{STANDIN}", "/tmp/ready"],
                                               "Labels": labels}, name=popcorn)
        await engine_a.start_container(cid)
        await engine_a.start_container(await engine_a.create_container(
            counter_config(**{"androcond.migrate": "pixel"}), name=plain))

        refused = await finished(daemon, plain)
        assert refused["state"] == "rejected"
        assert "cannot move to an aarch64 device" in refused["detail"]
        await wait_for_count(engine_a, plain, at_least=3)  # untouched, still counting

        end = await finished(daemon, popcorn, timeout=120)
        assert end["state"] == "rolled-back", end
        assert "restore refused by the device engine" in end["detail"]
        states = [e["state"] for e in daemon.lines
                  if e.get("msg") == "migration state" and e.get("container") == popcorn]
        assert states == ["preflight", "checkpointing", "streaming", "restoring", "rolling-back", "rolled-back"]
        async with asyncio.timeout(30):
            while True:  # the agent writes its log as it goes
                received = [json.loads(line) for line in agent.log.read_text().splitlines()
                            if '"received cores"' in line]
                if received:
                    break
                await asyncio.sleep(0.1)
        assert received[0]["mtypes"] == [3], "the device got aarch64 cores (mtype AARCH64)"
        assert await running(engine_a, popcorn), "back at the source after the device refused"
        assert not await running(engine_b, popcorn)
    finally:
        await daemon.kill()
        agent.stop()
