"""The test tiers, by marker. No marker: the fast tier (pure and hermetic: no root, no tool of this machine, no
network but loopback; seconds). `system`: needs root and this machine's tools (CRIU, crit, gcc, the aarch64
cross compiler, systemd-analyze). `testbed`: the real test bed (Docker engines, the device namespace, adbd,
sshd; the arm64 VM). scripts/test.sh runs the fast tier, then the other two with ANDROCOND_BED=1.

A prerequisite that is missing skips the test with the reason and the fix, except on the bed
(ANDROCOND_BED=1), where it fails: CI must never pass by skipping what it was meant to run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

ON_BED = bool(os.environ.get("ANDROCOND_BED"))
# Fixtures that need root and this machine's tools: a test using one is in the `system` tier.
SYSTEM_FIXTURES = frozenset({"real_dump", "builds", "cross_dump", "vdso", "processes"})
# The bed's session fixture: a test using it (directly or through another fixture) is in the `testbed` tier.
BED_FIXTURES = frozenset({"testbed"})


def unavailable(reason: str) -> NoReturn:
    """Skip off the bed, fail on it."""
    if ON_BED:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def classify(items: list[pytest.Item]) -> None:
    """Mark each test with the tier its fixtures put it in (a marker written by hand stays)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & BED_FIXTURES and item.get_closest_marker("testbed") is None:
            item.add_marker(pytest.mark.testbed)
        if names & SYSTEM_FIXTURES and item.get_closest_marker("testbed") is None \
                and item.get_closest_marker("system") is None:
            item.add_marker(pytest.mark.system)
