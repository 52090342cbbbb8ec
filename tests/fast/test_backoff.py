"""One backoff for every retry: its ceiling doubles up to the maximum, and the jitter stays in its band."""

from __future__ import annotations

import pytest

from androcond.backoff import Backoff


def test_without_jitter_the_delays_double_up_to_the_maximum() -> None:
    policy = Backoff(initial_s=1.0, maximum_s=10.0, floor=1.0)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.delay(10_000) == 10.0  # no overflow however long it has failed


@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_jitter_stays_between_the_floor_and_the_ceiling(floor: float) -> None:
    policy = Backoff(initial_s=2.0, maximum_s=100.0, floor=floor)
    for attempt in range(1, 8):
        ceiling = min(100.0, 2.0 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(ceiling * floor <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1, "jittered"
