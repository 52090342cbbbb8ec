"""Exponential backoff, one policy for every retry: the watcher reconnecting to its engine, webhook deliveries,
the resolver asking a device again."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    maximum_s: float = 30.0
    factor: float = 2.0
    # The delay is drawn between this fraction of the ceiling and the ceiling: 0 is full jitter (senders coming
    # back do not hit a receiver all at once), 1 none (a schedule that is logged and tested as it is).
    floor: float = 0.5

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt` (1 for the first retry)."""
        ceiling = min(self.maximum_s, self.initial_s * self.factor ** min(max(attempt, 1) - 1, 62))
        if self.floor >= 1.0:
            return ceiling
        return random.uniform(ceiling * self.floor, ceiling)  # noqa: S311 - jitter, not cryptography
