"""Pure parts of a migration: the source's layers and volumes, the memory figure from whatever the engine's
stats say (the device's create body: test_container_config.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from androcond.migration import Rejected
from androcond.source.host import memory_usage, named_volumes, upper_dir


def inspect(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Config": {"Image": "busybox:1", "Cmd": ["/bin/counter"], "Env": ["FOO=bar"], "WorkingDir": "",
                   "Hostname": "abc", "Tty": False, "User": None,
                   "Labels": {"androcond.migrate": "pixel", "app": "web"}},
        "HostConfig": {"NetworkMode": "bridge"},
        "Mounts": [{"Type": "volume", "Name": "vol", "Source": "/v/vol/_data", "Destination": "/data", "RW": True},
                   {"Type": "volume", "Name": "ro", "Source": "/v/ro/_data", "Destination": "/ro", "RW": False},
                   {"Type": "bind", "Source": "/host", "Destination": "/b"}],
        "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": "/l/upper", "LowerDir": "/l/a:/l/b"}},
    }
    base.update(over)
    return base


def test_upper_dir_and_volumes() -> None:
    assert upper_dir(inspect()) == Path("/l/upper")
    assert named_volumes(inspect()) == [("vol", Path("/v/vol/_data")), ("ro", Path("/v/ro/_data"))]
    with pytest.raises(Rejected, match="overlay2"):
        upper_dir(inspect(GraphDriver={"Name": "btrfs", "Data": {}}))
    with pytest.raises(Rejected, match="overlay2"):
        upper_dir(inspect(GraphDriver=None))


@pytest.mark.parametrize(("stats", "expected"), [
    ({"memory_stats": {"usage": 4096}}, 4096),
    (None, 0),                              # the engine answered `null` (a container stopped a moment ago)
    ({}, 0),
    ({"memory_stats": None}, 0),
    ({"memory_stats": {}}, 0),
    ({"memory_stats": {"usage": "12"}}, 0),
    ({"memory_stats": {"usage": -1}}, 0),
    ([1, 2], 0),
])
def test_memory_usage_from_any_stats(stats: object, expected: int) -> None:
    assert memory_usage(stats) == expected
