"""The host's own engine as a migration's target (the way back): the agent's session, run in the daemon's
process against the host's engine and spooling under the daemon's state directory, spoken to over a local
pair of sockets — the same protocol, digests, outcome store and exactly-once rules as on a device, and no
second implementation of the restore.

Its outcome store outlives the daemon: after a crash the resolver asks it as it asks a device, and an outcome
the dead daemon left in flight is settled by the agent's own recovery when the next link opens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from ..agent.server import Agent
from ..config import AgentSettings, DeviceSettings
from ..link.ssh import PhaseTimeouts
from ..link.transport import AgentConnection
from ..logging import get_logger
from ..migration.journal import HOME
from ..migration.roles import LinkFactory, TargetLink

log = get_logger(__name__)
# The session ends once its channel is closed (it discards an unfinished migration first: engine calls with
# their own timeouts); longer than this and it is cancelled.
SESSION_END_S = 60.0


class _Sockets:
    """The carrier of a local link: closing it closes our end; the session sees EOF and ends."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def close(self) -> None:
        self._writer.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()


async def _no_lines() -> AsyncIterator[bytes]:
    """An in-process agent logs through the daemon's own logger: no stderr to relay."""
    return
    yield b""  # pragma: no cover - makes this an async generator


def home_agent_settings(docker_host: str, state_dir: Path) -> AgentSettings:
    return AgentSettings(docker_host=docker_host, spool_dir=state_dir / "home")


async def settle_home(docker_host: str, state_dir: Path) -> None:
    """What a daemon that died left on the host's side of a way back (a target container made at begin, a
    restore it did not see end) is settled now, as an agent that restarts settles its own: the container made
    for a move that never restored is removed, a restore is answered from what the engine runs."""
    settings = home_agent_settings(docker_host, state_dir)
    outcomes = settings.spool_dir / "outcomes"
    if not await asyncio.to_thread(lambda: outcomes.is_dir() and any(outcomes.iterdir())):
        return
    agent = await Agent.open(settings)  # Agent.open settles every stale outcome
    await agent.close()


def home_links(docker_host: str, state_dir: Path, timeouts: PhaseTimeouts, device_links: LinkFactory) -> LinkFactory:
    """Links to the host's engine for the place named "host"; every other place through `device_links`."""
    settings = home_agent_settings(docker_host, state_dir)

    @contextlib.asynccontextmanager
    async def link_to(device: DeviceSettings) -> AsyncIterator[TargetLink]:
        if device.name != HOME:
            async with device_links(device) as link:
                yield link
            return
        agent = await Agent.open(settings)
        session: asyncio.Task[None] | None = None
        agent_writer: asyncio.StreamWriter | None = None
        try:
            ours, theirs = socket.socketpair()
            agent_reader, agent_writer = await asyncio.open_connection(sock=theirs, limit=2**20)
            session = asyncio.create_task(agent.handle(agent_reader, agent_writer, HOME), name="home-session")
            reader, writer = await asyncio.open_connection(sock=ours, limit=2**20)
            link = await AgentConnection.over(_Sockets(writer), writer, reader, _no_lines(), timeouts=timeouts,
                                              compress="none")
            async with link:
                yield link
        finally:
            if session is not None:
                await _end(session)
            if agent_writer is not None:
                agent_writer.close()
            await agent.close()

    return link_to


async def _end(session: asyncio.Task[None]) -> None:
    done, _ = await asyncio.wait([session], timeout=SESSION_END_S)
    if not done:
        log.error("the host's target session did not end; cancelling it")
        session.cancel()
        await asyncio.wait([session])
