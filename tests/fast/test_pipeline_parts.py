"""Pure parts of a migration: the device's create body, the source's layers and volumes, the memory figure
from whatever the engine's stats say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from androcond.pipeline import Rejected, memory_usage, named_volumes, target_config, upper_dir


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


def test_target_config_carries_what_the_device_needs() -> None:
    config = target_config(inspect())
    assert config["Image"] == "busybox:1"
    assert config["Cmd"] == ["/bin/counter"] and config["Env"] == ["FOO=bar"] and config["Hostname"] == "abc"
    assert config["Tty"] is False  # a false value is still carried; only None and "" are left out
    assert "WorkingDir" not in config and "User" not in config
    assert config["Labels"] == {"app": "web"}, "our own labels must not follow it (it would migrate again)"
    assert config["HostConfig"] == {"NetworkMode": "bridge", "Mounts": [
        {"Type": "volume", "Source": "vol", "Target": "/data", "ReadOnly": False},
        {"Type": "volume", "Source": "ro", "Target": "/ro", "ReadOnly": True}]}


def test_target_config_copes_with_missing_sections() -> None:
    config = target_config({"Config": {"Image": "x"}})
    assert config == {"Image": "x", "Labels": {}, "HostConfig": {"Mounts": [], "NetworkMode": "default"}}


def test_target_config_without_an_image_is_a_refusal_not_a_crash() -> None:
    with pytest.raises(Rejected, match="which image"):
        target_config({"Config": None})


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
