"""How the agent names a failure to the daemon (no test bed): exception → (code, message)."""

from __future__ import annotations

import asyncio
import errno

import asyncssh
import pytest

from androcond.agent.errors import (
    PEER_GONE,
    AgentError,
    BadMigrationId,
    IdleTimeout,
    NoSpace,
    ProtocolViolation,
    RestoreError,
    ShuttingDown,
    UnsafePath,
    classify,
)
from androcond.agent.outcomes import check_id
from androcond.agent.paths import check_name
from androcond.engine import EngineError, EngineUnreachable
from androcond.errors import AndrocondError
from androcond.protocol.codes import ErrorCode
from androcond.protocol.wire import WireError


@pytest.mark.parametrize(("exc", "code"), [
    (ProtocolViolation("one migration per connection"), "protocol"),
    (BadMigrationId("refused migration id '../x'"), "protocol"),
    (RestoreError("restore refused by the device engine"), "restore"),
    (UnsafePath("refused path '../x'"), "unsafe-path"),
    (NoSpace("not enough space on the device"), "no-space"),
    (IdleTimeout("the client sent nothing"), "idle-timeout"),
    (ShuttingDown("agent: shutting down"), "shutting-down"),
])
def test_agent_errors_carry_their_code_and_message(exc: AgentError, code: str) -> None:
    assert classify(exc) == (code, str(exc))


def test_an_agent_error_without_its_own_code_is_internal() -> None:
    assert classify(AgentError("odd")) == (ErrorCode.INTERNAL, "odd")


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_no_space_not_a_lost_connection(number: int) -> None:
    exc = OSError(number, "No space left on device", "/var/lib/docker/containers/x/checkpoints/c/pages-1.img")
    code, message = classify(exc)
    assert code == "no-space"
    assert "the device is out of space" in message
    assert "pages-1.img" in message


def test_engine_failures_are_engine_even_when_unreachable() -> None:
    # EngineUnreachable may also be a ConnectionError: it is the device engine, not the peer, that is gone.
    assert classify(EngineError("Docker engine at x: no such image", 404))[0] == "engine"
    code, message = classify(EngineUnreachable("Docker engine at x is unreachable"))
    assert code == "engine"
    assert "unreachable" in message


@pytest.mark.parametrize("exc", [BrokenPipeError(errno.EPIPE, "Broken pipe"), ConnectionResetError(),
                                 asyncssh.ConnectionLost("connection lost")])
def test_a_peer_that_is_gone_gets_no_frame(exc: Exception) -> None:
    assert classify(exc)[0] == PEER_GONE


def test_a_channel_broken_mid_frame_is_a_lost_peer_but_a_bad_frame_is_protocol() -> None:
    broken = WireError("the channel closed after 3 of 10 frame bytes")
    broken.__cause__ = asyncio.IncompleteReadError(b"abc", 10)
    assert classify(broken)[0] == PEER_GONE
    assert classify(WireError("undecodable frame of 12 bytes")) == ("protocol", "undecodable frame of 12 bytes")


@pytest.mark.parametrize("exc", [ValueError("bad"), KeyError("x"), OSError(errno.EIO, "I/O error"),
                                 TimeoutError()])
def test_anything_else_is_internal_and_named(exc: Exception) -> None:
    code, message = classify(exc)
    assert code == ErrorCode.INTERNAL
    assert type(exc).__name__ in message


def test_every_agent_error_is_an_androcond_error() -> None:
    assert issubclass(AgentError, AndrocondError)
    assert issubclass(NoSpace, OSError)


def test_checks_raise_the_agent_errors() -> None:
    with pytest.raises(BadMigrationId):
        check_id("../escape")
    with pytest.raises(UnsafePath):
        check_name("a/../b")
