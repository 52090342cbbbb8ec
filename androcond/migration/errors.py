"""The migration layer's errors, and the per-phase deadline that names the phase it ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import AndrocondError
from ..link.ssh import TransportError


class Rejected(AndrocondError):
    """Preflight refused the migration; nothing was frozen and the container keeps running at the source."""


class PhaseBudgetSpent(AndrocondError, TimeoutError):
    """A phase of the migration ran past its deadline (`[timeouts]`)."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"the {phase} phase did not finish within {seconds:g}s")
        self.phase = phase
        self.seconds = seconds


class DeviceDidNotRestore(TransportError):
    """The target answered the commit: it did not restore the container (its own error is the message)."""


@asynccontextmanager
async def budget(phase: str, seconds: float) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        if isinstance(exc, AndrocondError):  # a deadline of a layer below, already named
            raise
        raise PhaseBudgetSpent(phase, seconds) from exc
