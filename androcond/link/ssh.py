"""Reaching an agent: the ssh connection (host keys always checked, keys only), the link's errors and its
deadlines per phase. The framed protocol over it is transport.py's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncssh

from ..errors import AndrocondError
from ..protocol import protocol_pb2 as pb
from ..protocol import ssh
from ..protocol.codes import ErrorCode

T = TypeVar("T")


class TransportError(AndrocondError):
    """Root of the transport's errors."""


class HostKeyRejected(TransportError):
    """The device's host key is unknown or changed; nothing was sent."""


class AuthenticationFailed(TransportError):
    pass


class PhaseTimeout(TransportError, TimeoutError):
    def __init__(self, phase: str, seconds: float, what: str = "") -> None:
        super().__init__(f"timed out after {seconds:g}s in phase {phase!r}{f' ({what})' if what else ''}")
        self.phase = phase
        self.seconds = seconds


class StreamStalled(PhaseTimeout):
    """Nothing moved for the idle deadline: the link took no byte and the agent sent no verdict (a hung
    agent behind a live sshd answers keepalives, so only progress tells)."""


class AgentRefused(TransportError):
    """The agent answered with an error frame; its text is the message, its phase and code are kept."""

    def __init__(self, message: str, phase: str = "", code: ErrorCode = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.phase = phase
        self.code = code

    @classmethod
    def from_frame(cls, error: pb.Error, prefix: str = "") -> AgentRefused:
        code = ErrorCode.of(error.code)
        where = f" (agent, phase {error.phase}, {code})" if error.phase else ""
        return cls(f"{prefix}{error.message}{where}", error.phase, code)


class FileRejected(TransportError):
    """The agent refused a file (digest mismatch, short data); nothing will be restored."""


@dataclass(frozen=True)
class PhaseTimeouts:
    connect: float = 20.0
    hello: float = 20.0
    begin: float = 120.0       # includes creating the target container
    file_ack: float = 120.0    # the verdict on a file after its last byte
    image_ack: float = 600.0   # the verdict on a shipped image: the device's `docker load` finishing
    commit: float = 600.0      # `docker start --checkpoint` of a large container
    query: float = 20.0
    stream_idle: float = 30.0  # no progress at all (no byte taken, no verdict) for this long


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    identity: Path
    known_hosts: Path
    # Run under a stock OpenSSH server; our own `agent serve` ignores the command.
    agent_command: str = "androcond agent stdio"
    # Name to look up in known_hosts instead of host:port (an adb forward's local port changes every time).
    host_key_alias: str | None = None


async def connect(endpoint: Endpoint, timeouts: PhaseTimeouts) -> asyncssh.SSHClientConnection:
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        known_hosts = asyncssh.read_known_hosts(str(endpoint.known_hosts))
    except (OSError, ValueError) as exc:
        raise TransportError(f"cannot read known_hosts {endpoint.known_hosts}: {exc}") from exc
    try:
        return await within_phase("connect", timeouts.connect, asyncssh.connect(
            endpoint.host, endpoint.port, username=endpoint.user, known_hosts=known_hosts,
            client_keys=[str(endpoint.identity)], agent_path=None, preferred_auth="publickey",
            host_key_alias=endpoint.host_key_alias,
            encryption_algs=ssh.CIPHERS, keepalive_interval=ssh.CLIENT_KEEPALIVE_S,
            keepalive_count_max=ssh.CLIENT_KEEPALIVE_COUNT))
    except asyncssh.HostKeyNotVerifiable as exc:
        offered = await _offered_fingerprint(endpoint, timeouts)
        raise HostKeyRejected(f"host key of the agent at {where} is unknown or changed (server offers "
                              f"{offered}; known_hosts: {endpoint.known_hosts}); refusing to connect") from exc
    except asyncssh.PermissionDenied as exc:
        raise AuthenticationFailed(f"the agent at {where} refused key {endpoint.identity} for user "
                                   f"{endpoint.user!r}: {exc.reason}") from exc
    except (asyncssh.Error, OSError) as exc:
        raise TransportError(f"cannot connect to the agent at {where}: {exc}") from exc


async def _offered_fingerprint(endpoint: Endpoint, timeouts: PhaseTimeouts) -> str:
    """The fingerprint the server presents, for the error message (a second, key-only handshake)."""
    try:
        async with asyncio.timeout(timeouts.connect):
            key = await asyncssh.get_server_host_key(endpoint.host, endpoint.port)
    except (asyncssh.Error, OSError, TimeoutError):
        return "an unknown key"
    return key.get_fingerprint() if key is not None else "no key"


async def within_phase(phase: str, seconds: float, awaitable: Awaitable[T]) -> T:
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError as exc:
        raise PhaseTimeout(phase, seconds) from exc
