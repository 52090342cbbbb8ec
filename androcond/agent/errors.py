"""The agent's exceptions, and how any failure of a session is named to the daemon.

Every failure of a session reaches the daemon as one `Error` frame whose `code` is a stable name for the kind
of failure (protocol.proto lists them); :func:`classify` maps an exception to that code and a message.
"""

from __future__ import annotations

import asyncio
import errno
from enum import StrEnum
from typing import Final

import asyncssh

from ..engine import EngineError
from ..errors import AndrocondError
from ..protocol.codes import ErrorCode
from ..protocol.wire import WireError


class PeerGone(StrEnum):
    """Not a code on the wire: the peer is gone, so no frame can reach it (the failure is only logged)."""

    CONNECTION_LOST = "connection-lost"


PEER_GONE: Final = PeerGone.CONNECTION_LOST
Failure = ErrorCode | PeerGone

_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class AgentError(AndrocondError):
    """Root of the agent's own errors; `code` names the kind on the wire."""

    code: ErrorCode = ErrorCode.INTERNAL


class ProtocolViolation(AgentError):
    """The client sent something out of order or out of bounds."""

    code = ErrorCode.PROTOCOL


class BadMigrationId(ProtocolViolation):
    """A migration id that could not be a file name in the outcome store."""


class RestoreError(AgentError):
    """The device could not prepare or restore the container; the message is the engine's own text."""

    code = ErrorCode.RESTORE


class UnsafePath(AgentError):
    """A name from the wire that would escape its root or is not a plain relative path."""

    code = ErrorCode.UNSAFE_PATH


class NoSpace(AgentError, OSError):
    """The device has not enough free space for what was announced."""

    code = ErrorCode.NO_SPACE


class IdleTimeout(AgentError, TimeoutError):
    """The client sent nothing for too long."""

    code = ErrorCode.IDLE_TIMEOUT


class ShuttingDown(AgentError):
    """The agent is stopping: no new session, and an unfinished one is discarded."""

    code = ErrorCode.SHUTTING_DOWN


def classify(exc: BaseException) -> tuple[Failure, str]:
    """The wire code and message for a failure. The order matters: EngineUnreachable is also a
    ConnectionError (the device engine, not our peer), NoSpace is also an OSError."""
    if isinstance(exc, AgentError):
        return exc.code, str(exc)
    if isinstance(exc, EngineError):
        return ErrorCode.ENGINE, f"the device's Docker engine failed: {exc}"
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else ""
        return NoSpace.code, f"the device is out of space{where}: {exc.strerror or exc}"
    if isinstance(exc, WireError):
        # A channel that broke mid-frame is a peer that went away, not a malformed frame.
        if isinstance(exc.__cause__, asyncio.IncompleteReadError | ConnectionError | asyncssh.Error):
            return PEER_GONE, f"connection lost: {exc}"
        return ProtocolViolation.code, str(exc)
    if isinstance(exc, asyncssh.Error | ConnectionError):  # includes BrokenPipeError, ConnectionResetError
        return PEER_GONE, f"connection lost: {exc}"
    return ErrorCode.INTERNAL, f"agent internal error: {type(exc).__name__}: {exc}"
