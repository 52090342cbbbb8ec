"""The freezer hold's reading of runc's state and what it writes, on files laid out as runc and the kernel
would (the hold itself, on real cgroups, is proven on the bed: tests/agent/test_flat_freeze.py)."""

from __future__ import annotations

import json
import signal
import subprocess
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


def test_the_confirmed_end_kills_every_process_then_thaws(tmp_path: Path) -> None:
    """Real processes listed in the cgroup's cgroup.procs get their SIGKILL before the control file says thawed
    (the ordering that keeps a thawed task from running is the kernel's, proven on the bed)."""
    cgroup = tmp_path / "sys" / "freezer" / "docker" / "c5"
    cgroup.mkdir(parents=True)
    (cgroup / "freezer.state").write_text("FROZEN\n")
    runc_state(tmp_path / "runc", "c5", {"freezer": str(cgroup)})
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()  # a pid listed but already ended is no error
        (cgroup / "cgroup.procs").write_text("".join(f"{p.pid}\n" for p in (*children, gone)))
        assert Freezer.of_container(tmp_path / "runc", "c5").kill_and_thaw() == 3
        assert [child.wait(timeout=10) for child in children] == [-signal.SIGKILL] * 2
        assert (cgroup / "freezer.state").read_text() == "THAWED"
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_a_cgroup_without_its_process_list_is_not_thawed(tmp_path: Path) -> None:
    cgroup = tmp_path / "sys" / "fs" / "cgroup" / "c6"
    cgroup.mkdir(parents=True)
    (cgroup / "cgroup.freeze").write_text("1\n")
    runc_state(tmp_path / "runc", "c6", {"": str(cgroup)})
    with pytest.raises(FreezerError, match=r"cannot read the frozen cgroup's processes"):
        Freezer.of_container(tmp_path / "runc", "c6").kill_and_thaw()
    assert (cgroup / "cgroup.freeze").read_text() == "1\n"  # left frozen: nothing was killed
