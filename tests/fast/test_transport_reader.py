"""The daemon's link reader: whatever it raises fails the connection and wakes every waiter at once — a reply
awaited under an hour's deadline, a sender waiting for the agent to store — instead of leaving them asleep
until their deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from androcond.link.ssh import AgentRefused, PhaseTimeouts, TransportError
from androcond.link.transport import UNSTORED_LIMIT, AgentConnection
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.wire import encode_frame


class Channel:
    """The ssh connection and channel ends the link uses: what is written is kept, reads come from a
    StreamReader the test feeds."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()
        self.written: list[bytes] = []
        self.closed = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._no_stderr()

    async def _no_stderr(self) -> AsyncIterator[bytes]:
        await self.closed.wait()
        return
        yield b""  # an async generator that ends when the connection closes


class ExplodingPages:
    """A page source with a bug: feeding it raises what no code path expects."""

    async def feed(self, data: bytes) -> None:
        raise KeyError("a bug in the page source")

    async def replies(self) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""


HOUR = PhaseTimeouts(query=3600.0, commit=3600.0, stream_idle=3600.0)


def link_on(channel: Channel, *, reports_stored: bool = False) -> AgentConnection:
    any_end = cast(Any, channel)
    link = AgentConnection(any_end, any_end, any_end, any_end, HOUR)
    link.hello = pb.AgentHello(reports_stored=reports_stored)
    link._start_tasks()
    return link


async def test_an_unexpected_exception_in_the_reader_wakes_a_reply_waiter_at_once() -> None:
    channel = Channel()
    link = link_on(channel)
    link._pages = ExplodingPages()
    waiting = asyncio.create_task(link.query("m1"))  # its deadline is an hour
    await asyncio.sleep(0)  # the query is sent and waits for its reply
    started = time.monotonic()
    channel.reader.feed_data(encode_frame(pb.Frame(pages=pb.Pages(data=b"request"))))
    with pytest.raises(TransportError, match="reader failed: KeyError"):
        async with asyncio.timeout(1.0):
            await waiting
    assert time.monotonic() - started < 1.0
    assert channel.closed.is_set(), "the connection is closed, so a blocked sender wakes too"
    with pytest.raises(TransportError, match="reader failed"):
        await link.query("m2")  # the link is failed for every later call
    await link.close()


async def test_it_also_wakes_a_sender_waiting_for_the_agent_to_store() -> None:
    channel = Channel()
    link = link_on(channel, reports_stored=True)
    link._pages = ExplodingPages()
    link._data_sent = UNSTORED_LIMIT  # as if 32 MiB were in flight, none stored yet
    waiting = asyncio.create_task(link._until_stored(1024, idle=3600.0))
    await asyncio.sleep(0)
    channel.reader.feed_data(encode_frame(pb.Frame(pages=pb.Pages(data=b"request"))))
    with pytest.raises(TransportError, match="reader failed"):
        async with asyncio.timeout(1.0):
            await waiting
    await link.close()


class ClosedChannel(Channel):
    """The agent has closed the channel: every write fails as asyncssh's does."""

    def write(self, data: bytes) -> None:
        raise BrokenPipeError("Channel not open for sending")


async def test_a_send_on_a_closed_channel_raises_the_agents_reason_not_the_broken_pipe() -> None:
    """The agent said why (its error frame, then the close) but the reader has not read it yet when the next
    send finds the channel closed: the send raises the agent's reason."""
    channel = ClosedChannel()
    link = link_on(channel)
    channel.reader.feed_data(encode_frame(pb.Frame(error=pb.Error(
        message="pages-1.img: the compressed chunk at byte 0 is unreadable", phase="stream"))))
    channel.reader.feed_eof()
    with pytest.raises(AgentRefused, match="compressed chunk at byte 0 is unreadable"):
        async with asyncio.timeout(1.0):
            await link.query("m1")
    await link.close()


async def test_without_a_reason_the_broken_pipe_is_named() -> None:
    channel = ClosedChannel()
    link = link_on(channel)
    channel.reader.feed_eof()  # closed without a word
    with pytest.raises(TransportError, match="broke while sending") as caught:
        await link.query("m1")
    assert not isinstance(caught.value, AgentRefused)
    await link.close()
