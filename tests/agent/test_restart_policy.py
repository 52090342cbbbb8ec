"""A container with a restart policy moves exactly once (real bed). The engine starts such a container afresh as
soon as a checkpoint has stopped it (Docker does so after `docker checkpoint create`, for on-failure, always and
unless-stopped alike): a second copy, counting from 1, while the first is on its way — and a rollback that then
finds it running takes that copy for the restored one. So the source lifts the policy for the move; the device
applies it once its restore succeeded, a rollback puts it back at the source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine

from ..helpers import DaemonProcess, start_counting
from .conftest import AgentBed
from .daemon_bed import assert_back_at_source, continuous, counting_on, finished, running, write_daemon_config
from .test_daemon_faults import injected, labelled_counter

pytestmark = pytest.mark.testbed

POLICIES = {"always": {"Name": "always", "MaximumRetryCount": 0},
            "on-failure": {"Name": "on-failure", "MaximumRetryCount": 3}}


def _with_policy(policy: dict[str, Any]) -> dict[str, Any]:
    config = labelled_counter()
    config["HostConfig"] = {"RestartPolicy": policy}
    return config


@pytest.mark.parametrize("name", list(POLICIES))
async def test_a_rollback_finds_the_source_as_it_was_with_its_policy(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str,
        name: str) -> None:
    """The device's restore is never asked for (`commit`): the source is restored from its checkpoint and counts
    on — not started afresh by its engine meanwhile — and has its restart policy again."""
    counted = await start_counting(engine_a, _with_policy(POLICIES[name]), unique_name)
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path), env=injected("commit", unique_name))
    try:
        await daemon.start()
        end = await finished(daemon, unique_name)
        assert end["state"] == "rolled-back", end
        await assert_back_at_source(engine_a, engine_b, unique_name, counted)
        source = await engine_a.inspect_container(unique_name)
        assert source["RestartCount"] == 0, "the engine started it afresh while it moved"
        assert source["HostConfig"]["RestartPolicy"] == POLICIES[name]
        assert [e["policy"] for e in daemon.lines if e.get("msg") == "restart policy lifted for the move"] == [
            POLICIES[name]]
    finally:
        await daemon.kill()


async def test_a_container_with_a_policy_moves_once_and_keeps_it_on_the_device(
        agent_server: AgentBed, engine_a: Engine, engine_b: Engine, tmp_path: Path, unique_name: str) -> None:
    """Moved through runc now that nothing would start it again at the source; on the device it counts on from
    where it was, with its policy."""
    policy = POLICIES["always"]
    counted = await start_counting(engine_a, _with_policy(policy), unique_name)
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path))
    try:
        await daemon.start()
        end = await finished(daemon, unique_name)
        assert end["state"] == "done", end
        checkpointed = await daemon.wait_for_log(lambda e: e.get("msg") == "checkpointed")
        assert checkpointed["via"] == "runc", checkpointed
    finally:
        await daemon.kill()
    seen = await counting_on(engine_b, unique_name, counted)
    assert continuous(seen[seen.index(counted):] if counted in seen else seen), seen
    assert not await running(engine_a, unique_name)
    on_device = await engine_b.inspect_container(unique_name)
    assert on_device["HostConfig"]["RestartPolicy"] == policy and on_device["RestartCount"] == 0
