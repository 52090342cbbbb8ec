"""`engine.restart_policy`: which inspected containers have a restart policy a move must lift (and put back)."""

from __future__ import annotations

import pytest

from androcond.engine import restart_policy


@pytest.mark.parametrize("inspect", [{}, {"HostConfig": {}}, {"HostConfig": {"RestartPolicy": None}},
                                     {"HostConfig": {"RestartPolicy": {"Name": ""}}},
                                     {"HostConfig": {"RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}}}])
def test_a_container_without_a_restart_policy_has_none_to_lift(inspect: dict[str, object]) -> None:
    assert restart_policy(inspect) is None


@pytest.mark.parametrize("name", ["on-failure", "always", "unless-stopped"])
def test_a_restart_policy_is_returned_whole_to_be_put_back(name: str) -> None:
    policy = {"Name": name, "MaximumRetryCount": 3 if name == "on-failure" else 0}
    found = restart_policy({"HostConfig": {"RestartPolicy": policy}})
    assert found == policy
    assert found is not policy  # a copy: what the caller keeps does not change with the inspect's dict
