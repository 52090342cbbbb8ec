"""Device → device on the real bed: a second namespace device with its own Docker engine and agent (made by this
module, removed after it); a container on the first device moves to the second, relayed through the daemon
(each agent speaks only to the daemon), counting on with what was written on the first; then home from there,
with the configuration it had at home."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from androcond.agent.device import RUNTIME_NAME, runtime_path
from androcond.engine import Engine

from ..helpers import DaemonProcess
from ..testbed.agent import DeviceAgent
from ..testbed.bed import DATA_ROOT, RUN_ROOT, TEST_LABEL, TestBed
from ..testbed.device import DeviceNamespace
from ..testbed.engines import DockerEngine
from ..testbed.images import build_programs, import_test_image, rootfs_tar
from .conftest import AgentBed
from .daemon_bed import counting_on, migrate_by_cli, running
from .test_way_back import LABELS, _containers, _exec, _out_to_the_device

pytestmark = pytest.mark.testbed

TABLET_PORT = 8187


class Tablet:
    def __init__(self, bed: TestBed, directory: Path) -> None:
        self.device = DeviceNamespace(netns="androcond-dev1", host_if="acd1-host", device_if="acd1-dev",
                                      host_ip="10.231.8.1", device_ip="10.231.8.2", run_dir=RUN_ROOT / "device1")
        self.engine = DockerEngine("c", DATA_ROOT / "engine-c", RUN_ROOT / "engine-c", netns=self.device.netns,
                                   runtimes={RUNTIME_NAME: str(runtime_path())})
        self.agent = DeviceAgent(bed, directory, TABLET_PORT, name="agent-tablet", device=self.device,
                                 engine=self.engine, host_key=directory / "tablet_host_key")


@pytest.fixture(scope="module")
def tablet(agent_server: AgentBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tablet]:
    """A second device: its namespace, engine and agent, all made here and removed after the module."""
    bed = agent_server.bed
    made = Tablet(bed, tmp_path_factory.mktemp("tablet"))
    created = made.device.create()
    started = False
    try:
        started = made.engine.start()
        import_test_image(made.engine, rootfs_tar(build_programs(RUN_ROOT / "programs")))
        made.agent.start()
        yield made
    finally:
        made.agent.stop()
        if made.engine.answers():
            made.engine.remove_containers(TEST_LABEL)
        if started:
            made.engine.stop()
            shutil.rmtree(made.engine.data_root, ignore_errors=True)
        if created:
            made.device.delete()


def _with_tablet(config: Path, tablet: Tablet, directory: Path) -> None:
    known = tablet.agent.known_hosts(directory / "known_hosts-tablet")
    config.write_text(config.read_text() + f"""
[devices.tablet]
address = "{tablet.device.device_ip}:{TABLET_PORT}"
identity = "{tablet.agent.bed.device.client_key}"
known_hosts = "{known}"
""")


async def test_a_container_moves_from_one_device_to_another_and_home_from_there(
        agent_server: AgentBed, tablet: Tablet, engine_a: Engine, engine_b: Engine, tmp_path: Path,
        unique_name: str) -> None:
    bed = agent_server.bed
    try:
        async with Engine(tablet.engine.host) as engine_c:
            config, on_pixel = await _out_to_the_device(agent_server, engine_a, engine_b, tmp_path, unique_name)
            _with_tablet(config, tablet, tmp_path)
            _exec(bed.engine_b.host, unique_name, "sh", "-c", "echo written-on-pixel > /tmp/news")
            daemon = DaemonProcess(config)
            await daemon.start()
            try:
                await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
                code, record = await migrate_by_cli(config, unique_name, "tablet")
                assert code == 0, record
                assert record["state"] == "done" and record["from"] == "pixel" and record["to"] == "tablet"
                # The same ISA, nothing to recode: pixel's files went on to tablet's agent as they came, each with
                # pixel's own digest, which tablet checked.
                relayed = await daemon.wait_for_log(lambda e: e.get("msg", "").startswith("relayed the source's"))
                assert relayed["bytes"] == record["bytes_sent"] > 0, relayed
                on_tablet = (await counting_on(engine_c, unique_name, on_pixel))[-1]
                assert not await running(engine_b, unique_name) and not await running(engine_a, unique_name)
                assert _exec(tablet.engine.host, unique_name, "cat", "/tmp/news").strip() == "written-on-pixel"
                placed = {c["name"]: c for c in await _containers(config)}
                assert placed[unique_name]["where"] == "tablet" and placed[unique_name]["from"] == "pixel"

                code, record = await migrate_by_cli(config, unique_name, "host")
                assert code == 0 and record["from"] == "tablet", record
                await counting_on(engine_a, unique_name, on_tablet)
                assert not await running(engine_c, unique_name)
                home = await engine_a.inspect_container(unique_name)
                assert home["Config"]["Labels"]["androcond.migrate"] == LABELS["androcond.migrate"]
                assert home["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"
            finally:
                await daemon.kill()
    finally:
        for engine in (bed.engine_a, bed.engine_b, tablet.engine):
            engine.cli("rm", "-f", unique_name, check=False)
