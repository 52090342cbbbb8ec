"""Operations on the real bed: signed CloudEvents for a restored, a rejected and a rolled-back migration,
delivered in order to a real receiver; /metrics parses and moves; the secret appears nowhere."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from androcond.engine import Engine

from ..helpers import DaemonProcess, counter_config
from .conftest import AGENT_PORT, AgentBed
from .daemon_bed import Receiver, faulty_agent, finished, write_daemon_config

pytestmark = pytest.mark.testbed

SECRET = f"hook-secret-{uuid.uuid4().hex}"


async def test_events_metrics_and_secrecy(agent_server: AgentBed, engine_a: Engine, tmp_path: Path,
                                          unique_name: str) -> None:
    receiver = Receiver(SECRET)
    hook_url = await receiver.start()
    broken = faulty_agent(agent_server, "flip-byte", AGENT_PORT + 4, tmp_path)
    known = agent_server.known_hosts(tmp_path, agent_server.bed.device.device_ip, broken.port)
    extra = f"""
[devices.broken]
address = "{agent_server.bed.device.device_ip}:{broken.port}"
identity = "{agent_server.bed.device.client_key}"
known_hosts = "{known}"
[[webhooks]]
url = "{hook_url}"
secret = "{SECRET}"
"""
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, extra=extra))
    await daemon.start()
    good, bad_label, rolled = f"{unique_name}-good", f"{unique_name}-label", f"{unique_name}-rolled"
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        for name, device in ((good, "pixel"), (bad_label, "nowhere"), (rolled, "broken")):
            cid = await engine_a.create_container(counter_config(**{"androcond.migrate": device}), name=name)
            await engine_a.start_container(cid)
        assert (await finished(daemon, good))["state"] == "done"
        assert (await finished(daemon, rolled))["state"] == "rolled-back"
        await receiver.wait_for(good, "restored")
        await receiver.wait_for(bad_label, "rejected")
        await receiver.wait_for(rolled, "rolled_back")

        kinds = receiver.kinds_by_subject()
        assert kinds[good] == ["requested", "checkpointed", "restored"]
        assert kinds[bad_label] == ["rejected"]
        assert kinds[rolled] == ["requested", "checkpointed", "rolled_back"]
        assert receiver.bad_signatures == 0
        restored = next(e for e in receiver.events if e["subject"] == good and e["type"].endswith("restored"))
        assert restored["specversion"] == "1.0"
        assert restored["source"].startswith("androcond://")
        assert restored["data"]["device"] == "pixel"
        assert restored["data"]["target_container_id"]
        assert restored["data"]["timings"]["downtime_s"] > 0

        sock = tmp_path / "api.sock"
        done_key = ("androcond_migrations_total", (("outcome", "done"),))
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session, \
                asyncio.timeout(30):
            while True:  # a migration is counted just after its final state is logged
                async with session.get("http://androcond/metrics") as response:
                    text = await response.text()
                samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                           for family in text_string_to_metric_families(text) for s in family.samples}
                if samples.get(done_key, 0) >= 1 and len([k for k in samples if k[0] == done_key[0]]) >= 3:
                    break
                await asyncio.sleep(0.1)
        assert samples[("androcond_migrations_total", (("outcome", "rolled-back"),))] >= 1
        assert samples[("androcond_migrations_total", (("outcome", "rejected"),))] >= 1
        assert samples[("androcond_bytes_streamed_total", ())] > 0
        assert samples[("androcond_migration_downtime_seconds_count", ())] >= 1
        assert ("androcond_webhook_deliveries_total", (("outcome", "delivered"),)) in samples
        assert SECRET not in text
        assert await daemon.stop() == 0
        assert SECRET not in "\n".join(daemon.raw)
    finally:
        await daemon.kill()
        broken.stop()
        await receiver.stop()


async def test_undelivered_events_go_out_after_a_daemon_restart(agent_server: AgentBed, engine_a: Engine,
                                                                tmp_path: Path, unique_name: str) -> None:
    with socket.socket() as probe:  # a port with no receiver yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    extra = f"""
[[webhooks]]
url = "http://127.0.0.1:{port}/hook"
secret = "{SECRET}"
"""
    config = write_daemon_config(agent_server, tmp_path, extra=extra)
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        cid = await engine_a.create_container(counter_config(**{"androcond.migrate": "pixel"}), name=unique_name)
        await engine_a.start_container(cid)
        assert (await finished(daemon, unique_name))["state"] == "done"
        assert await daemon.stop() == 0  # the receiver never answered: the events wait in the outbox
    finally:
        await daemon.kill()

    receiver = Receiver(SECRET)
    await receiver.start(port)
    again = DaemonProcess(config)
    await again.start()
    try:
        await receiver.wait_for(unique_name, "restored")
        assert receiver.kinds_by_subject()[unique_name] == ["requested", "checkpointed", "restored"]
        assert receiver.bad_signatures == 0
        assert len({e["id"] for e in receiver.events}) == len(receiver.events), "each event once"
    finally:
        await again.kill()
        await receiver.stop()
