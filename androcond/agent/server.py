"""Where agent sessions come from: its own asyncssh server (`agent serve`) or stdin/stdout under a stock
OpenSSH server (`agent stdio`).

Every live session is a task the Agent knows of. On SIGTERM/SIGINT `agent serve` stops listening, gives the
sessions `[agent] shutdown_timeout` seconds to finish, then cancels the rest (each discards its unfinished
migration and tells its client "shutting-down"); a second signal cuts the wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from ..config import AgentSettings
from ..criu import kdat
from ..engine import Engine, EngineError
from ..logging import get_logger, log_context
from ..protocol import protocol_pb2 as pb
from ..protocol import ssh
from ..protocol.wire import FrameReader, FrameWriter, write_frame
from . import readout
from .device import DeviceEngine, gather_facts
from .errors import ShuttingDown, classify
from .outcomes import OutcomeStore
from .recovery import settle_all
from .session import HELLO, AgentSession

log = get_logger(__name__)

# Cancelled sessions still discard (engine calls, each with its own timeout): wait this long for them.
CANCEL_GRACE_S = 60.0
# Closing an ssh connection or telling a client no is best effort, never a reason to hang.
CLOSE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class AgentParts:
    """The session and device-engine classes an agent runs with: androcond's own, or, on the test bed, ones
    with a fault (tests/agent/faulty_agent.py), given explicitly."""

    session: type[AgentSession] = AgentSession
    device: type[DeviceEngine] = DeviceEngine


async def _sweep_readouts(engine: Engine, spool: Path) -> None:
    """Tidying only: an engine that does not answer now leaves the marks for the next start."""
    try:
        swept = await readout.sweep(engine, spool)
    except (EngineError, OSError) as exc:
        log.warning("could not sweep the readout marks of removed containers", error=str(exc))
        return
    if swept:
        log.info("swept the readout marks of removed containers", container_ids=swept)


class Agent:
    """What every session shares: the device engine, its facts, the outcome store, the live sessions."""

    def __init__(self, settings: AgentSettings, engine: Engine, device: DeviceEngine,
                 parts: AgentParts = AgentParts()) -> None:
        self.settings = settings
        self.parts = parts
        self.engine = engine
        self.device = device
        self.outcomes = OutcomeStore(settings.spool_dir / "outcomes")
        self.sessions: set[asyncio.Task[Any]] = set()
        self.accepting = True

    @classmethod
    async def open(cls, settings: AgentSettings, parts: AgentParts = AgentParts()) -> Agent:
        engine = Engine(settings.docker_host)
        try:
            facts = await gather_facts(engine)
            await asyncio.to_thread(settings.spool_dir.mkdir, parents=True, exist_ok=True)
            device = parts.device(engine, facts, settings.spool_dir)
            device.exec_root = settings.exec_root
            agent = cls(settings, engine, device, parts)
            # What an agent killed mid-migration left in flight gets its final answer now.
            settled = await settle_all(agent.outcomes, agent.device)
            await _sweep_readouts(engine, settings.spool_dir)
            await kdat.keep_probe()  # the device's CRIU then skips its kernel probe on each run of this boot
        except BaseException:
            await engine.close()
            raise
        log.info("agent ready", isa=facts.isa, page_size=facts.page_size, criu=facts.criu_version,
                 kernel=facts.kernel_release, criu_dumps_sockets=facts.criu_dumps_sockets,
                 fast_restore_runtime=facts.runtime or "none (plain engine restore)",
                 engine=facts.engine_version, data_root=str(facts.data_root), settled_stale=settled)
        return agent

    async def close(self) -> None:
        await self.engine.close()

    async def handle(self, reader: FrameReader, writer: FrameWriter, peer: str) -> None:
        """One session, in the calling task (registered while it runs)."""
        task = asyncio.current_task()
        assert task is not None
        with log_context(peer=peer):
            if not self.accepting:
                log.info("session refused: the agent is shutting down")
                await _refuse(writer, ShuttingDown("agent: shutting down"))
                return
            self.sessions.add(task)
            try:
                await self.parts.session(self.device, self.outcomes, reader, writer).run()
            finally:
                self.sessions.discard(task)

    async def shut_down(self, force: asyncio.Event) -> None:
        """Take no new session; let the live ones finish within shutdown_timeout, then cancel the rest."""
        self.accepting = False
        live = set(self.sessions)
        if not live:
            log.info("no session in flight")
            return
        timeout = self.settings.shutdown_timeout
        log.info("waiting for sessions to finish", sessions=len(live), timeout_s=timeout)
        left = await _wait_for(live, timeout, force)
        for task in left:
            task.cancel()
        stuck = await _wait_for(left, CANCEL_GRACE_S, force) if left else set()
        log.info("sessions ended", drained=len(live) - len(left), cancelled=len(left) - len(stuck),
                 still_running=len(stuck), forced=force.is_set())


async def _wait_for(tasks: set[asyncio.Task[Any]], seconds: float, force: asyncio.Event) -> set[asyncio.Task[Any]]:
    """Wait until the tasks are done, `seconds` passed or `force` is set; returns those not done."""
    forced = asyncio.create_task(force.wait(), name="forced-stop")
    try:
        async with asyncio.timeout(seconds):
            pending = {t for t in tasks if not t.done()}
            while pending and not forced.done():
                await asyncio.wait(pending | {forced}, return_when=asyncio.FIRST_COMPLETED)
                pending = {t for t in pending if not t.done()}
    except TimeoutError:
        pass
    finally:
        forced.cancel()
        await asyncio.gather(forced, return_exceptions=True)
    return {t for t in tasks if not t.done()}


async def _refuse(writer: FrameWriter, exc: Exception) -> None:
    """Tell a client that connects now why it gets no session (best effort, bounded)."""
    code, message = classify(exc)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await write_frame(writer, pb.Frame(error=pb.Error(message=message, phase=HELLO, code=code)))


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(path)
    path.chmod(0o600)
    log.info("generated a host key", path=str(path), fingerprint=key.get_fingerprint())
    return key


class _Server(asyncssh.SSHServer):
    """Keeps the set of open connections, so that shutdown can close what is left."""

    def __init__(self, connections: set[asyncssh.SSHServerConnection]) -> None:
        self._connections = connections
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._connections.discard(self._conn)


async def start_ssh_server(agent: Agent, connections: set[asyncssh.SSHServerConnection] | None = None
                           ) -> asyncssh.SSHAcceptor:
    settings = agent.settings
    host, port = settings.listen.host, settings.listen.port
    open_connections: set[asyncssh.SSHServerConnection] = set() if connections is None else connections

    async def on_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
        # Runs in a task of the connection's own (asyncssh keeps it); the Agent registers it as a session.
        peer = process.get_extra_info("peername")
        try:
            await agent.handle(process.stdin, process.stdout, f"{peer[0]}:{peer[1]}" if peer else "?")
        finally:
            process.exit(0)

    return await asyncssh.create_server(
        lambda: _Server(open_connections), host, port,
        server_host_keys=[load_or_create_host_key(settings.host_key)],
        authorized_client_keys=str(settings.authorized_keys),
        process_factory=on_process, encoding=None,
        # Only our protocol: no shells, port forwarding, agent or X11 forwarding, SFTP or SCP.
        allow_scp=False, agent_forwarding=False, x11_forwarding=False, allow_pty=False,
        keepalive_interval=ssh.SERVER_KEEPALIVE_S,
        window=ssh.CHANNEL_WINDOW, max_pktsize=ssh.CHANNEL_PACKET, encryption_algs=ssh.CIPHERS,
    )


async def serve(settings: AgentSettings, parts: AgentParts = AgentParts()) -> int:
    agent = await Agent.open(settings, parts)
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()  # a second signal: stop waiting for sessions

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    connections: set[asyncssh.SSHServerConnection] = set()
    try:
        server = await start_ssh_server(agent, connections)
        log.info("agent listening", listen=str(settings.listen))
        await stop.wait()
        log.info("agent stopping: no new connections")
        server.close()
        await agent.shut_down(force)
        await _close_all(connections)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await server.wait_closed()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await agent.close()
    log.info("agent stopped")
    return 0


async def _close_all(connections: set[asyncssh.SSHServerConnection]) -> None:
    for conn in list(connections):
        conn.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await asyncio.gather(*(conn.wait_closed() for conn in list(connections)), return_exceptions=True)


async def stdio(settings: AgentSettings) -> int:
    """One session over stdin/stdout (the ssh channel when run by OpenSSH). SIGTERM/SIGINT cancel it: the
    unfinished migration is discarded and the client told so."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    try:
        agent = await Agent.open(settings)
    except Exception as exc:
        # The client is waiting for a hello: tell it why there is none.
        log.error("agent could not start", error=str(exc))
        await _refuse(writer, exc)
        writer.close()
        raise
    session = asyncio.create_task(agent.handle(reader, writer, "stdio"), name="session")
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, session.cancel)
    try:
        try:
            await asyncio.wait([session])
        except asyncio.CancelledError:
            session.cancel()
            await asyncio.wait([session])
            raise
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await agent.close()
        writer.close()
    if session.cancelled():
        log.info("session ended by a signal")
        return 0
    session.result()
    return 0
