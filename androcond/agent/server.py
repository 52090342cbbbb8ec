"""Where agent sessions come from: its own asyncssh server (`agent serve`) or stdin/stdout under a stock
OpenSSH server (`agent stdio`)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import asyncssh

from ..config import AgentSettings
from ..engine import Engine
from ..logging import get_logger, log_context
from ..protocol.wire import FrameReader, FrameWriter
from .device import DeviceEngine, gather_facts
from .outcomes import OutcomeStore
from .session import AgentSession

log = get_logger(__name__)


class Agent:
    """What every session shares: the device engine, its facts, and the outcome store."""

    session_class: type[AgentSession] = AgentSession  # tests inject faults through a subclass

    def __init__(self, settings: AgentSettings, engine: Engine, device: DeviceEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.device = device
        self.outcomes = OutcomeStore(settings.spool_dir / "outcomes")

    @classmethod
    async def open(cls, settings: AgentSettings) -> Agent:
        engine = Engine(settings.docker_host)
        try:
            facts = await gather_facts(engine)
        except BaseException:
            await engine.close()
            raise
        settings.spool_dir.mkdir(parents=True, exist_ok=True)
        log.info("agent ready", isa=facts.isa, page_size=facts.page_size, criu=facts.criu_version,
                 engine=facts.engine_version, data_root=str(facts.data_root))
        return cls(settings, engine, DeviceEngine(engine, facts))

    async def close(self) -> None:
        await self.engine.close()

    async def handle(self, reader: FrameReader, writer: FrameWriter, peer: str) -> None:
        with log_context(peer=peer):
            await self.session_class(self.device, self.outcomes, reader, writer).run()


def _parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    if path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(path)
    path.chmod(0o600)
    log.info("generated a host key", path=str(path), fingerprint=key.get_fingerprint())
    return key


async def start_ssh_server(agent: Agent) -> asyncssh.SSHAcceptor:
    settings = agent.settings
    host, port = _parse_listen(settings.listen)

    async def on_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
        peer = process.get_extra_info("peername")
        try:
            await agent.handle(process.stdin, process.stdout, f"{peer[0]}:{peer[1]}" if peer else "?")
        finally:
            process.exit(0)

    return await asyncssh.create_server(
        asyncssh.SSHServer, host, port,
        server_host_keys=[load_or_create_host_key(settings.host_key)],
        authorized_client_keys=str(settings.authorized_keys),
        process_factory=on_process, encoding=None,
        # Only our protocol: no shells, port forwarding, agent or X11 forwarding, SFTP or SCP.
        allow_scp=False, agent_forwarding=False, x11_forwarding=False, allow_pty=False,
        keepalive_interval=30,
        # Same throughput settings as the client (transport.py): wide window, big packets, AES-GCM first.
        window=8 * 1024 * 1024, max_pktsize=256 * 1024,
        encryption_algs=("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                         "aes128-ctr", "aes256-ctr"),
    )


async def serve(settings: AgentSettings) -> int:
    agent = await Agent.open(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        server = await start_ssh_server(agent)
        log.info("agent listening", listen=settings.listen)
        await stop.wait()
        log.info("agent stopping")
        server.close()
        await server.wait_closed()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await agent.close()
    return 0


async def stdio(settings: AgentSettings) -> int:
    """One session over stdin/stdout (the ssh channel when run by OpenSSH)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    agent = await Agent.open(settings)
    try:
        await agent.handle(reader, writer, "stdio")
    finally:
        await agent.close()
        writer.close()
    return 0
