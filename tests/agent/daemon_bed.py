"""The daemon against the test bed: a config for it, agents (healthy or with a fault) on the device, and
checks that a container runs exactly once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from androcond.engine import Engine, EngineError

from ..helpers import DaemonProcess, counts, wait_for_count
from ..testbed.agent import DeviceAgent, daemon_config
from .conftest import AGENT_PORT, AgentBed

TERMINAL = ("done", "rolled-back", "failed", "rejected")


def write_daemon_config(agent: AgentBed, directory: Path, *, port: int = AGENT_PORT, max_migrations: int = 2,
                        shutdown_timeout: float = 8.0, api: str | None = None, api_token: str | None = None,
                        extra: str = "", checkpoint: str = "runc") -> Path:
    """`extra` lands in the device's table (and may open tables of its own after it)."""
    token = f'api_token = "{api_token}"' if api_token else ""
    return daemon_config(agent.agent, directory, port=port, daemon=f"""
api = "{api or f"unix:{directory / 'api.sock'}"}"
{token}
log_format = "json"
max_migrations = {max_migrations}
shutdown_timeout = {shutdown_timeout}""", docker=f'checkpoint = "{checkpoint}"', device=extra)


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


async def counting_on(engine: Engine, name: str, counted: int, more: int = 3, timeout: float = 60) -> list[int]:
    """Its counts once it counted `more` past both `counted` (what the test saw before the move) and the last
    count its log shows now: it counts at this moment, on from where it was. (A log that shows nothing yet, as a
    container just restored on the device may, counts from `counted`.)"""
    now = counts(await engine.container_logs(name))
    return await wait_for_count(engine, name, at_least=max([counted, *now[-1:]]) + more, timeout=timeout)


async def assert_back_at_source(engine_a: Engine, engine_b: Engine, name: str, counted: int) -> None:
    """Rolled back: running at the source and counting on past `counted`, the count the test waited for before
    the move, with no restart (the whole log is continuous: a restart would print `count 1` again); not running
    on the device."""
    seen = await counting_on(engine_a, name, counted)
    assert counted in seen, f"the source's log lost the count {counted} seen before the move: {seen[:3]}…"
    assert continuous(seen), "the source restarted instead of continuing"
    assert await running(engine_a, name)
    assert not await running(engine_b, name)


def continuous(seen: list[int]) -> bool:
    return seen == list(range(seen[0], seen[0] + len(seen)))


class Receiver:
    """A webhook receiver that checks every signature as it arrives."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._runner: web.AppRunner | None = None
        self.events: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.arrived = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Androcond-Signature", ""), expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        async with self.arrived:
            self.events.append(json.loads(body))
            self.arrived.notify_all()
        return web.Response(status=204)

    def kinds_by_subject(self) -> dict[str, list[str]]:
        kinds: dict[str, list[str]] = defaultdict(list)
        for event in self.events:
            kinds[event["subject"]].append(event["type"].removeprefix("io.androcond.migration."))
        return dict(kinds)

    async def wait_for(self, subject: str, last_kind: str) -> None:
        async with asyncio.timeout(60), self.arrived:
            await self.arrived.wait_for(lambda: last_kind in self.kinds_by_subject().get(subject, []))

    async def start(self, port: int = 0) -> str:
        """Serve on a loopback port (our own by default); returns the URL for the daemon's [[webhooks]]."""
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def killed_at(config: Path, name: str, to: str, state: str, timeout: float = 60) -> None:
    """`androcond migrate NAME --to TO` through a daemon of its own, SIGKILLed as the move enters `state`."""
    daemon = DaemonProcess(config)
    asking: asyncio.Task[tuple[int, dict[str, Any]]] | None = None
    try:
        await daemon.start()
        await daemon.wait_for_log(lambda e: e.get("msg") == "ready")
        asking = asyncio.create_task(migrate_by_cli(config, name, to))
        await daemon.wait_for_log(state_of(name, state), timeout=timeout)
        await daemon.kill()
    finally:
        await daemon.kill()
        if asking is not None:
            await asyncio.gather(asking, return_exceptions=True)


async def migrate_by_cli(config: Path, name: str, device: str = "pixel") -> tuple[int, dict[str, Any]]:
    """`androcond migrate NAME --to DEVICE --wait --json`, as a user runs it: its exit code and record."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "androcond", "migrate", name, "--to", device, "--wait", "--json",
        "--config", str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(180):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    try:
        record: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"migrate printed no JSON: {out!r} {err!r}") from None
    return proc.returncode, record
