"""androcond's agent on the test bed's device: its config, host key and `agent serve` process (owned by
whoever starts it, stopped by pid)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncssh

from .bed import TestBed
from .device import DeviceNamespace, port_open
from .engines import DockerEngine
from .proc import TestBedError, alive, stop_pid, tail, wait_for


class DeviceAgent:
    """`python -m <module...> --config FILE` inside the device namespace, listening on `port` there (on all
    of its interfaces, so an adb forward, which arrives on its loopback, reaches it too)."""

    def __init__(self, bed: TestBed, directory: Path, port: int,
                 module: tuple[str, ...] = ("androcond", "agent", "serve"), name: str = "agent",
                 host_key: Path | None = None, env: dict[str, str] | None = None, *,
                 device: DeviceNamespace | None = None, engine: DockerEngine | None = None) -> None:
        """On the bed's device and its engine B, or on `device` with `engine` (a second device of a test)."""
        self.bed = bed
        self.device = device or bed.device
        engine = engine or bed.engine_b
        self.directory = directory
        self.port = port
        self.module = module
        self.name = name
        self.config = directory / f"{name}.toml"
        self.host_key_path = host_key or directory / f"{name}_host_key"  # shared: one known_hosts for all
        self.log = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = env
        directory.mkdir(parents=True, exist_ok=True)
        if not self.host_key_path.exists():
            asyncssh.generate_private_key("ssh-ed25519").write_private_key(self.host_key_path)
            self.host_key_path.chmod(0o600)
        self.host_key = asyncssh.read_private_key(self.host_key_path)
        self.config.write_text(f"""
[daemon]
log_format = "json"
log_level = "debug"
[agent]
docker_host = "{engine.host}"
spool_dir = "{directory / f'{name}-spool'}"
listen = "0.0.0.0:{port}"
host_key = "{self.host_key_path}"
authorized_keys = "{bed.device.authorized_keys}"
exec_root = "{engine.run_dir / 'exec'}"
""")

    def known_hosts(self, path: Path, host: str | None = None, port: int | None = None) -> Path:
        public = self.host_key.export_public_key().decode().strip()
        path.write_text(f"[{host or self.device.device_ip}]:{port or self.port} {public}\n")
        return path

    def start(self) -> DeviceAgent:
        device_ip = self.device.device_ip
        if port_open(device_ip, self.port):
            raise TestBedError(f"port {self.port} on the device is taken (a stale agent?); it would answer for ours")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.device.nsenter(sys.executable, "-m", *self.module, "--config", str(self.config)),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=None if self.env is None else {**os.environ, **self.env})
        pid = self.proc.pid
        wait_for(lambda: port_open(device_ip, self.port), timeout=30, what=f"{self.name} on port {self.port}",
                 diagnose=lambda: tail(self.log) if alive(pid) else f"exited:\n{tail(self.log)}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, what=self.name)
            self.proc.wait(timeout=10)


def daemon_config(agent: DeviceAgent, directory: Path, *, daemon: str = "", docker: str = "",
                  device: str = "", extra: str = "", port: int | None = None, host: str | None = None) -> Path:
    """A config for `androcond run` on the bed: engine A as the source, `agent` as the device `pixel`
    (on `port`, default the agent's own; at `host`, default the device's address: a relay in front of it
    otherwise). The keyword strings add TOML lines to their tables."""
    bed = agent.bed
    port = port or agent.port
    host = host or bed.device.device_ip
    path = directory / f"androcond-{port}.toml"
    path.write_text(f"""
[daemon]
state_dir = "{directory / 'state'}"
{daemon}
[docker]
host = "{bed.engine_a.host}"
runc_root = "{bed.engine_a.runc_root}"
{docker}
[devices.pixel]
address = "{host}:{port}"
identity = "{bed.device.client_key}"
known_hosts = "{agent.known_hosts(directory / f'known_hosts-{port}', host=host, port=port)}"
{device}
{extra}
""")
    return path
