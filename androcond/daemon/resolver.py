"""The resolver: settles every migration the journal holds unfinished and nobody is running — a previous
daemon's (crash, SIGKILL, power loss) at start-up, and, while the daemon runs, any that ended unresolved
because the device could not be asked. Each is asked again with exponential backoff until it is settled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..backoff import Backoff
from ..logging import get_logger
from ..migration import Context, resolve
from ..migration.journal import Journal

log = get_logger(__name__)

FIRST_RETRY_S = 1.0


@dataclass
class _Retry:
    at: float
    attempt: int


class Resolver:
    def __init__(self, ctx: Context, journal: Journal, running: Callable[[str], bool],
                 backoff_max_s: float) -> None:
        self._ctx = ctx
        self._journal = journal
        self._running = running  # by migration id: in the scheduler's hands, not ours
        self._backoff_max_s = backoff_max_s
        self._wake = asyncio.Event()
        self._retries: dict[str, _Retry] = {}

    def wake(self) -> None:
        """A migration ended unresolved: look at the journal now rather than at the next retry."""
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._retries)

    async def run(self) -> None:
        """Until cancelled. One failing record (or a failing journal) never stops the others."""
        while True:
            self._wake.clear()
            try:
                await self._pass()
            except Exception as exc:
                log.error("resolver pass failed; trying again", error=str(exc), exc_info=exc)
            await self._sleep()

    async def _pass(self) -> None:
        now = time.monotonic()
        unfinished = [r for r in await self._journal.unfinished() if not self._running(r.id)]
        known = {r.id for r in unfinished}
        for stale in set(self._retries) - known:  # settled elsewhere (e.g. by an explicit migration)
            del self._retries[stale]
        for record in unfinished:
            retry = self._retries.get(record.id)
            if retry is not None and retry.at > now:
                continue
            try:
                settled = await resolve(self._ctx, record)
            except Exception as exc:
                log.error("could not resolve a migration; will retry", migration_id=record.id,
                          error=str(exc), exc_info=exc)
                settled = False
            if settled:
                self._retries.pop(record.id, None)
                log.info("migration resolved", migration_id=record.id, state=str(record.state))
                continue
            attempt = 1 if retry is None else retry.attempt + 1
            delay = Backoff(FIRST_RETRY_S, self._backoff_max_s, floor=1.0).delay(attempt)
            self._retries[record.id] = _Retry(time.monotonic() + delay, attempt)
            log.info("migration still unresolved", migration_id=record.id, retry_in_s=delay)

    async def _sleep(self) -> None:
        now = time.monotonic()
        wait = min((r.at - now for r in self._retries.values()), default=self._backoff_max_s)
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                await self._wake.wait()
        except TimeoutError:
            pass
