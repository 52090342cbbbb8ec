"""A migration's record as the phases change it: every transition is legal (states.py) and journaled before
it takes effect, then announced (webhooks, systemd status); timings and adjustments go with it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..logging import get_logger
from .journal import Journal, MigrationRecord
from .states import TERMINAL, MigrationState, allowed

log = get_logger(__name__)


class Recorder:
    def __init__(self, record: MigrationRecord, journal: Journal,
                 on_change: Callable[[MigrationRecord], Awaitable[None]] | None = None) -> None:
        self.record = record
        self._journal = journal
        self._on_change = on_change

    async def transition(self, state: MigrationState, detail: str = "") -> None:
        record = self.record
        if not allowed(record.state, state):
            raise AssertionError(f"{record.state} → {state} is not a legal transition")
        if state in TERMINAL:  # with the final state, so whoever sees it (migrate --wait) sees the total too
            record.timings["total_s"] = round(time.time() - record.created_at, 3)
        record.state = state
        await self._journal.save(record, detail)
        log.info("migration state", state=str(state), **({"detail": detail} if detail else {}))
        if self._on_change is not None:
            await self._on_change(record)

    async def save(self, detail: str = "") -> None:
        await self._journal.save(self.record, detail)

    def time(self, name: str, since: float) -> None:
        """A timing in seconds since `since` (time.monotonic())."""
        self.record.timings[name] = round(time.monotonic() - since, 3)

    def adjusted(self, changes: dict[str, dict[str, Any]], where: str) -> None:
        for name, change in changes.items():
            log.warning("configuration adjusted", field=name, by=where, change_from=change.get("from"),
                        change_to=change.get("to"), why=change.get("why"))
        self.record.adjusted.update(changes)
