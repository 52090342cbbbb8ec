"""The agent's image queue between the session and the device's `docker load` (no test bed): neither side
waits forever for a counterpart that is gone."""

from __future__ import annotations

import asyncio

import pytest

from androcond.agent.errors import RestoreError
from androcond.agent.image_load import get_unless_failed, put_unless_failed
from androcond.aio import complete


async def test_a_full_queue_whose_consumer_dies_fails_instead_of_hanging() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(2)

    async def dying_load() -> None:
        await queue.get()
        await queue.get()
        raise RestoreError("loading the image failed: connection reset")

    load = asyncio.create_task(dying_load())
    with pytest.raises(RestoreError, match="connection reset"):
        async with asyncio.timeout(5):
            for _ in range(10):
                await put_unless_failed(queue, b"chunk", load)
    assert load.done()


async def test_a_consumer_failing_with_another_error_is_reported_as_a_failed_load() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(1)

    async def broken() -> None:
        raise ConnectionResetError("reset by peer")

    load = asyncio.create_task(broken())
    await asyncio.wait([load])
    with pytest.raises(RestoreError, match="loading the image failed: reset by peer"):
        await put_unless_failed(queue, b"chunk", load)


async def test_a_consumer_that_takes_nothing_stalls_out() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(1)
    load = asyncio.create_task(asyncio.Event().wait())  # alive, never reads
    try:
        await put_unless_failed(queue, b"one", load)
        with pytest.raises(RestoreError, match="took no data"):
            await put_unless_failed(queue, b"two", load, stall_timeout=0.1)
        assert queue.qsize() == 1, "the put that gave up left nothing behind"
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)


async def test_put_succeeds_while_the_consumer_keeps_reading() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(1)
    got: list[bytes] = []

    async def load() -> None:
        while (item := await queue.get()) is not None:
            got.append(item)

    task = asyncio.create_task(load())
    for i in range(20):
        await put_unless_failed(queue, bytes([i]), task)
    await put_unless_failed(queue, None, task)
    await task
    assert got == [bytes([i]) for i in range(20)]


async def test_the_consumer_stops_when_the_session_is_gone() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(2)
    session = asyncio.create_task(asyncio.Event().wait())
    getter = asyncio.create_task(get_unless_failed(queue, session))
    await asyncio.sleep(0)  # let it start waiting
    session.cancel()
    with pytest.raises(RestoreError, match="session ended"):
        async with asyncio.timeout(5):
            await getter


async def test_queued_items_are_still_taken_after_the_session_ended() -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(2)
    session = asyncio.create_task(asyncio.sleep(0))
    await session
    queue.put_nowait(b"last")
    assert await get_unless_failed(queue, session) == b"last"


async def test_complete_finishes_the_work_before_the_cancellation_goes_on() -> None:
    finished = asyncio.Event()
    started = asyncio.Event()

    async def cleanup() -> None:
        started.set()
        await asyncio.sleep(0.05)
        finished.set()

    caller = asyncio.create_task(complete(cleanup()))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished.is_set()
