"""The bed's fault points: read once from the environment, armed per point and container, a typo refused."""

from __future__ import annotations

import pytest

from androcond.faults import ENV, NO_FAULTS, Faults, InjectedFault


def test_a_point_is_armed_for_its_container_only_or_for_any() -> None:
    faults = Faults.from_environ({ENV: "commit@web, stream"})
    assert faults.armed("commit", "web") and not faults.armed("commit", "db")
    assert faults.armed("stream", "db")
    with pytest.raises(InjectedFault, match="commit"):
        faults.inject("commit", "web")
    faults.inject("commit", "db")  # not armed for db: nothing happens


def test_unset_arms_nothing_and_a_typo_is_refused() -> None:
    assert Faults.from_environ({}) == NO_FAULTS and not NO_FAULTS.armed("commit", "web")
    with pytest.raises(ValueError, match="unknown fault point 'comit'"):
        Faults.parse("comit@web")
