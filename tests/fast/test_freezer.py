"""The freezer hold's reading of runc's state and what it writes, on files laid out as runc and the kernel
would (the hold itself, on real cgroups, is proven on the bed: tests/agent/test_flat_freeze.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from androcond.criu.freezer import Freezer, FreezerError


def runc_state(root: Path, cid: str, cgroup_paths: object) -> None:
    (root / cid).mkdir(parents=True)
    (root / cid / "state.json").write_text(json.dumps({"id": cid, "cgroup_paths": cgroup_paths}))


def test_cgroup_v1_freezer(tmp_path: Path) -> None:
    cgroup = tmp_path / "sys" / "freezer" / "docker" / "c1"
    cgroup.mkdir(parents=True)
    (cgroup / "freezer.state").write_text("THAWED\n")
    runc_state(tmp_path / "runc", "c1", {"freezer": str(cgroup), "memory": str(tmp_path / "elsewhere")})
    freezer = Freezer.of_container(tmp_path / "runc", "c1")
    assert not freezer.v2
    freezer.freeze()
    assert (cgroup / "freezer.state").read_text() == "FROZEN"
    freezer.thaw()
    assert (cgroup / "freezer.state").read_text() == "THAWED"


def test_cgroup_v2_freezer(tmp_path: Path) -> None:
    cgroup = tmp_path / "sys" / "system.slice" / "docker-c2.scope"
    cgroup.mkdir(parents=True)
    (cgroup / "cgroup.freeze").write_text("0\n")
    runc_state(tmp_path / "runc", "c2", {"": str(cgroup)})
    freezer = Freezer.hold(tmp_path / "runc", "c2")  # found and frozen
    assert freezer.v2
    assert (cgroup / "cgroup.freeze").read_text() == "1"
    freezer.thaw()
    assert (cgroup / "cgroup.freeze").read_text() == "0"


@pytest.mark.parametrize(("paths", "why"), [
    (None, "names no freezer cgroup"),
    ({"memory": "/sys/fs/cgroup/memory/docker/c3"}, "names no freezer cgroup"),
    (["/sys/fs/cgroup"], "cgroup_paths is not a table"),
    ({"freezer": "/nonexistent/freezer/docker/c3"}, "freezer.state is not there"),
])
def test_a_freezer_that_cannot_be_found_is_named(tmp_path: Path, paths: object, why: str) -> None:
    runc_state(tmp_path / "runc", "c3", paths)
    with pytest.raises(FreezerError, match=why):
        Freezer.of_container(tmp_path / "runc", "c3")


def test_no_runc_state(tmp_path: Path) -> None:
    with pytest.raises(FreezerError, match="cannot read the container's runc state"):
        Freezer.of_container(tmp_path, "absent")


def test_a_cgroup_gone_before_the_write_is_named(tmp_path: Path) -> None:
    cgroup = tmp_path / "sys" / "freezer" / "docker" / "c4"
    cgroup.mkdir(parents=True)
    (cgroup / "freezer.state").write_text("THAWED\n")
    runc_state(tmp_path / "runc", "c4", {"freezer": str(cgroup)})
    freezer = Freezer.of_container(tmp_path / "runc", "c4")
    (cgroup / "freezer.state").unlink()
    cgroup.rmdir()  # the container went away meanwhile
    with pytest.raises(FreezerError, match=r"cannot write FROZEN to .*c4/freezer.state"):
        freezer.freeze()
