"""The daemon against the test bed: a config for it, agents (healthy or with a fault) on the device, and
checks that a container runs exactly once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from androcond.engine import Engine, EngineError

from ..helpers import DaemonProcess
from ..testbed.agent import DeviceAgent
from .conftest import AGENT_PORT, AgentBed

TERMINAL = ("done", "rolled-back", "failed", "rejected")


def write_daemon_config(agent: AgentBed, directory: Path, *, port: int = AGENT_PORT, max_migrations: int = 2,
                        shutdown_timeout: float = 8.0, api: str | None = None, api_token: str | None = None,
                        extra: str = "", checkpoint: str = "runc") -> Path:
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
checkpoint = "{checkpoint}"
runc_root = "{bed.engine_a.runc_root}"
[devices.pixel]
address = "{bed.device.device_ip}:{port}"
identity = "{bed.device.client_key}"
known_hosts = "{known}"
{extra}
""")
    return path


def faulty_agent(agent: AgentBed, fault: str, port: int, directory: Path,
                 env: dict[str, str] | None = None) -> DeviceAgent:
    """An agent with one fault (tests/agent/faulty_agent.py) on its own port, owned by the test."""
    return DeviceAgent(agent.bed, directory, port, module=("tests.agent.faulty_agent", fault),
                       name=f"agent-{fault}", host_key=agent.agent.host_key_path, env=env).start()


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
