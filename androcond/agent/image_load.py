"""The image the device lacks, loaded into its engine as it arrives: the session puts the chunks of `docker
save` into a bounded queue that the engine's `docker load` drains. Each side gives up when the other is gone:
a load that died never frees a slot, a session that ended never sends the rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from .errors import RestoreError

T = TypeVar("T")

QUEUE_CHUNKS = 16
# The device engine's `docker load` must take image data at least this often: a load that stalls is a failure.
STALL_TIMEOUT_S = 120.0
# After the image's last byte, the device engine gets this long to finish the load.
LOAD_TIMEOUT_S = 600.0


def load_failure(load: asyncio.Task[Any]) -> RestoreError:
    if load.cancelled():
        return RestoreError("loading the image failed: the load was cancelled")
    exc = load.exception()
    if exc is None:
        return RestoreError("loading the image failed: the device engine ended the load before the image did")
    if isinstance(exc, RestoreError):
        return exc
    failure = RestoreError(f"loading the image failed: {exc}")
    failure.__cause__ = exc
    return failure


async def put_unless_failed(queue: asyncio.Queue[T], item: T, counterpart: asyncio.Task[Any],
                            stall_timeout: float = STALL_TIMEOUT_S) -> None:
    """Put `item` unless the consumer `counterpart` ends first: a dead consumer never frees a slot, so a
    plain put would wait forever. Its failure is raised as a RestoreError; so is a consumer that takes
    nothing for `stall_timeout` seconds."""
    if counterpart.done():
        raise load_failure(counterpart)
    if not queue.full():
        queue.put_nowait(item)
        return
    putter = asyncio.ensure_future(queue.put(item))
    try:
        await asyncio.wait([putter, counterpart], timeout=stall_timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not putter.done():
            putter.cancel()
            await asyncio.gather(putter, return_exceptions=True)
    if not putter.cancelled():
        putter.result()
        return
    if counterpart.done():
        raise load_failure(counterpart)
    raise RestoreError(f"loading the image failed: the device engine took no data for {stall_timeout:g} s")


async def get_unless_failed(queue: asyncio.Queue[T], counterpart: asyncio.Task[Any]) -> T:
    """Get an item unless the producer `counterpart` (the session) ends first: then raise RestoreError so
    the consumer stops instead of waiting for data that will never come."""
    if not queue.empty():
        return queue.get_nowait()
    if counterpart.done():
        raise RestoreError("the session ended before the image was complete")
    getter = asyncio.ensure_future(queue.get())
    try:
        await asyncio.wait([getter, counterpart], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
            await asyncio.gather(getter, return_exceptions=True)
    if not getter.cancelled():
        return getter.result()
    raise RestoreError("the session ended before the image was complete")


async def drain(queue: asyncio.Queue[bytes | None], session: asyncio.Task[Any]) -> AsyncIterator[bytes]:
    while (chunk := await get_unless_failed(queue, session)) is not None:
        yield chunk


async def finish_load(load: asyncio.Task[None]) -> None:
    """Wait for the image load after its last byte, bounded; every failure as a RestoreError."""
    try:
        async with asyncio.timeout(LOAD_TIMEOUT_S):
            await asyncio.wait([load])
    except TimeoutError:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        raise RestoreError(f"loading the image failed: the device engine did not finish within "
                           f"{LOAD_TIMEOUT_S:g} s") from None
    if load.cancelled() or load.exception() is not None:
        raise load_failure(load)
