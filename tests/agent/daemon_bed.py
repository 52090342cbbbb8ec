"""The daemon against the test bed: a config for it, agents (healthy or with a fault) on the device, and
checks that a container runs exactly once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from androcond.engine import Engine, EngineError

from ..helpers import DaemonProcess
from ..testbed.proc import alive, stop_pid, tail, wait_for
from .conftest import AGENT_PORT, AgentBed, _listening

TERMINAL = ("done", "rolled-back", "failed", "rejected")


def write_daemon_config(agent: AgentBed, directory: Path, *, port: int = AGENT_PORT, max_migrations: int = 2,
                        shutdown_timeout: float = 8.0, api: str | None = None, api_token: str | None = None,
                        extra: str = "") -> Path:
    bed = agent.bed
    known = agent.known_hosts(directory, bed.device.device_ip, port)
    path = directory / f"androcond-{port}.toml"
    path.write_text(f"""
[daemon]
state_dir = "{directory / 'state'}"
api = "{api or f"unix:{directory / 'api.sock'}"}"
{f'api_token = "{api_token}"' if api_token else ""}
log_format = "json"
max_migrations = {max_migrations}
shutdown_timeout = {shutdown_timeout}
[docker]
host = "{bed.engine_a.host}"
[devices.pixel]
address = "{bed.device.device_ip}:{port}"
identity = "{bed.device.client_key}"
known_hosts = "{known}"
{extra}
""")
    return path


class FaultyAgent:
    """An agent with one fault (tests/agent/faulty_agent.py) on its own port, owned by the test."""

    def __init__(self, agent: AgentBed, fault: str, port: int, directory: Path) -> None:
        self.agent, self.fault, self.port = agent, fault, port
        self.config = directory / f"agent-{fault}.toml"
        self.config.write_text(agent.config.read_text().replace(f":{AGENT_PORT}\"", f":{port}\"")
                               .replace("/spool", f"/spool-{fault}"))
        self.log = directory / f"agent-{fault}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FaultyAgent:
        bed = self.agent.bed
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(bed.device.nsenter(sys.executable, "-m", "tests.agent.faulty_agent",
                                                            self.fault, "--config", str(self.config)),
                                         stdout=out, stderr=subprocess.STDOUT)
        pid = self.proc.pid
        wait_for(lambda: _listening(bed.device.device_ip, self.port), timeout=30, what=f"agent ({self.fault})",
                 diagnose=lambda: tail(self.log) if alive(pid) else f"exited:\n{tail(self.log)}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, what=f"agent ({self.fault})")
            self.proc.wait()


def state_of(name: str, *states: str) -> Callable[[dict[str, Any]], bool]:
    def match(entry: dict[str, Any]) -> bool:
        return entry.get("msg") == "migration state" and entry.get("container") == name and \
            entry.get("state") in states

    return match


async def finished(daemon: DaemonProcess, name: str, timeout: float = 90) -> dict[str, Any]:
    return await daemon.wait_for_log(state_of(name, *TERMINAL), timeout=timeout)


async def running(engine: Engine, name: str) -> bool:
    try:
        return bool((await engine.inspect_container(name))["State"]["Running"])
    except EngineError as exc:
        if exc.status == 404:
            return False
        raise
