"""One owner for tasks that must outlive the caller that started them (a rollback begun by a cancelled
migration): each is kept until it ends, and whoever shuts down waits for them within a budget, then cancels."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class TaskOwner:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self, budget_s: float) -> int:
        """Wait (bounded) for the owned tasks; return how many are still running."""
        pending = set(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=budget_s)
        return sum(1 for task in pending if not task.done())

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
