"""The agent on the test bed's device: its own ssh server (`agent serve`) and under OpenSSH (`agent stdio`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from androcond.link.ssh import Endpoint

from ..recoder.conftest import builds, recoder_image  # noqa: F401 - shared with the cross-ISA tests
from ..testbed import TestBed
from ..testbed.agent import DeviceAgent
from ..testbed.bed import TEST_RUN
from .arm64_bed import arm64_device  # noqa: F401 - one arm64 guest per session, for every module that needs it

# A port of this test run's own, so that a second run on the same bed does not talk to our agent.
AGENT_PORT = 20000 + int(TEST_RUN, 16) % 10000


@dataclass(frozen=True)
class AgentBed:
    agent: DeviceAgent
    bed: TestBed

    @property
    def config(self) -> Path:
        return self.agent.config

    @property
    def host_key(self) -> asyncssh.SSHKey:
        return self.agent.host_key

    def known_hosts(self, directory: Path, host: str, port: int, key: asyncssh.SSHKey | None = None) -> Path:
        path = directory / f"known_hosts-{host}-{port}"
        public = (key or self.host_key).export_public_key().decode().strip()
        path.write_text(f"[{host}]:{port} {public}\n")
        return path

    def serve_endpoint(self, directory: Path, host: str | None = None, port: int = AGENT_PORT) -> Endpoint:
        host = host or self.bed.device.device_ip
        return Endpoint(host, port, "root", self.bed.device.client_key, self.known_hosts(directory, host, port))

    def openssh_endpoint(self, directory: Path) -> Endpoint:
        host, port = self.bed.device.device_ip, self.bed.sshd_port
        known = directory / "known_hosts-openssh"
        known.write_text(self.bed.device.known_hosts_line(host, port))
        command = f"{sys.executable} -m androcond agent stdio --config {self.config}"
        return Endpoint(host, port, "root", self.bed.device.client_key, known, agent_command=command)


@pytest.fixture(scope="session")
def agent_bed(testbed: TestBed, tmp_path_factory: pytest.TempPathFactory) -> AgentBed:
    return AgentBed(DeviceAgent(testbed, tmp_path_factory.mktemp("agent"), AGENT_PORT), testbed)


@pytest.fixture(scope="session")
def agent_server(agent_bed: AgentBed) -> Iterator[AgentBed]:
    """`androcond agent serve` inside the device namespace, as a process this fixture owns."""
    agent_bed.agent.start()
    try:
        yield agent_bed
    finally:
        agent_bed.agent.stop()
