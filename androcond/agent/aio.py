"""Small asyncio helpers for work that must not be abandoned halfway."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def complete(work: Awaitable[T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile, then let the cancellation go on.

    For cleanup, and for thread work whose effects (an open fd, a file made) must be known before anything
    else touches them: a cancelled `to_thread` leaves its thread running unseen. Only for bounded work; the
    task is owned here and always awaited.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])  # unlike awaiting the task, a cancellation of ours does not reach it
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        failure = None if task.cancelled() else task.exception()
        raise asyncio.CancelledError() from failure
    return task.result()
