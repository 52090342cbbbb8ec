"""The agent on the test bed's device: its own ssh server (`agent serve`) and under OpenSSH (`agent stdio`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from androcond.transport import Endpoint

from ..testbed import TestBed
from ..testbed.bed import TEST_RUN
from ..testbed.proc import alive, stop_pid, tail, wait_for

# A port of this test run's own, so that a second run on the same bed does not talk to our agent.
AGENT_PORT = 20000 + int(TEST_RUN, 16) % 10000


@dataclass(frozen=True)
class AgentBed:
    config: Path
    spool: Path
    host_key: asyncssh.SSHKey
    bed: TestBed

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
    root = tmp_path_factory.mktemp("agent")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key.write_private_key(root / "host_key")
    (root / "host_key").chmod(0o600)
    config = root / "agent.toml"
    config.write_text(f"""
[daemon]
log_format = "json"
log_level = "debug"
[agent]
docker_host = "{testbed.engine_b.host}"
spool_dir = "{root / 'spool'}"
listen = "0.0.0.0:{AGENT_PORT}"  # inside the namespace: its veth and its loopback (adb forward)
host_key = "{root / 'host_key'}"
authorized_keys = "{testbed.device.authorized_keys}"
""")
    return AgentBed(config, root / "spool", host_key, testbed)


@pytest.fixture(scope="session")
def agent_server(agent_bed: AgentBed) -> Iterator[AgentBed]:
    """`androcond agent serve` inside the device namespace, as a process this fixture owns."""
    if _listening(agent_bed.bed.device.device_ip, AGENT_PORT):
        raise RuntimeError(f"port {AGENT_PORT} on the device is taken (a stale agent?); it would answer for ours")
    log = agent_bed.config.parent / "agent-serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(agent_bed.bed.device.nsenter(
            sys.executable, "-m", "androcond", "agent", "serve", "--config", str(agent_bed.config)),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(agent_bed.bed.device.device_ip, AGENT_PORT), timeout=30,
                 what="androcond agent serve",
                 diagnose=lambda: tail(log) if alive(proc.pid) else f"exited:\n{tail(log)}")
        yield agent_bed
    finally:
        stop_pid(proc.pid, what="agent serve")
        proc.wait(timeout=10)


def _listening(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
