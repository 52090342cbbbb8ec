"""androcond-runc, the device engine's runtime (androcond/agent/runtime/): what it hands to runc, checked with a
stand-in runc that prints its arguments (ANDROCOND_RUNC)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from androcond.agent import emulated
from androcond.agent.device import RUNTIME_CRIU_CONFIG, RUNTIME_LAZY, RUNTIME_STUB, runtime_path
from androcond.protocol.emulation import MOUNT, once_argv


@pytest.fixture
def fake_runc(tmp_path: Path) -> Path:
    runc = tmp_path / "runc"
    runc.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    runc.chmod(0o755)
    return runc


def _call(runc: Path, *args: str, python: str = sys.executable, marks: Path | None = None) -> list[str]:
    env = {"ANDROCOND_RUNC": str(runc), "ANDROCOND_PYTHON": python, "PATH": "/usr/bin:/bin",
           **({"ANDROCOND_RUNC_MARKS": str(marks)} if marks else {})}
    out = subprocess.run([str(runtime_path()), *args], env=env,
                         capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.splitlines()


@pytest.fixture
def stub(tmp_path: Path) -> tuple[Path, Path]:
    stub, images = tmp_path / "stub", tmp_path / "spool images"
    stub.mkdir()
    images.mkdir()
    (stub / RUNTIME_STUB).write_text(str(images))
    return stub, images


def test_a_restore_from_a_stub_reads_and_logs_where_the_images_are(fake_runc: Path, stub: tuple[Path, Path]) -> None:
    directory, images = stub
    args = ["--root", "/run/r", "restore", "--work-path", "/run/work", "--image-path", str(directory),
            "--detach", "cid"]
    assert _call(fake_runc, *args) == ["--root", "/run/r", "restore", "--work-path", str(images), "--image-path",
                                       str(images), "--detach", "cid"]
    joined = ["restore", f"--image-path={directory}", "--work-path=/run/work", "cid"]
    assert _call(fake_runc, *joined) == ["restore", f"--image-path={images}", f"--work-path={images}", "cid"]


def test_a_lazy_stub_restores_with_lazy_pages_right_after_the_subcommand(fake_runc: Path,
                                                                        stub: tuple[Path, Path]) -> None:
    directory, images = stub
    (directory / RUNTIME_LAZY).write_text("")
    args = ["--root", "/run/r", "restore", "--work-path", "/w", "--image-path", str(directory), "--detach", "cid"]
    assert _call(fake_runc, *args) == ["--root", "/run/r", "restore", "--lazy-pages", "--work-path", str(images),
                                       "--image-path", str(images), "--detach", "cid"]


def test_without_the_lazy_marker_no_lazy_pages(fake_runc: Path, stub: tuple[Path, Path]) -> None:
    directory, _images = stub
    assert "--lazy-pages" not in _call(fake_runc, "restore", "--image-path", str(directory), "cid")


def test_everything_else_passes_through_unchanged(fake_runc: Path, tmp_path: Path) -> None:
    plain = ["restore", "--work-path", "/run/work", "--image-path", str(tmp_path), "an arg with spaces", "cid"]
    assert _call(fake_runc, *plain) == plain
    for args in (["state", "cid"], ["create", "--bundle", "/b", "cid"], ["delete", "--force", "cid"]):
        assert _call(fake_runc, *args) == args


def test_the_criu_configuration_reaches_runc_through_the_bundle(fake_runc: Path, stub: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    """An engine older than API 1.43 drops the container's `org.criu.config` annotation: the wrapper puts it in
    the bundle's spec before runc reads it, keeping the spec's other annotations."""
    directory, _images = stub
    (directory / RUNTIME_CRIU_CONFIG).write_text("/var/spool/androcond/criu-restore.conf")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": {"team": "edge"}}))
    _call(fake_runc, "restore", "--bundle", str(bundle), "--image-path", str(directory), "cid")
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["annotations"] == {"team": "edge", "org.criu.config": "/var/spool/androcond/criu-restore.conf"}
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2"}))
    _call(fake_runc, "restore", f"--bundle={bundle}", "--image-path", str(directory), "cid")
    assert json.loads((bundle / "config.json").read_text())["annotations"] == {
        "org.criu.config": "/var/spool/androcond/criu-restore.conf"}
    # Not an androcond restore (no stub): the spec is runc's business alone.
    (bundle / "config.json").write_text("{}")
    _call(fake_runc, "restore", "--bundle", str(bundle), "--image-path", str(tmp_path), "cid")
    assert (bundle / "config.json").read_text() == "{}"


def test_a_spec_that_has_the_annotation_already_is_left_alone_without_an_interpreter(
        fake_runc: Path, stub: tuple[Path, Path], tmp_path: Path) -> None:
    """An engine of API 1.43 or later passed the annotation on: the wrapper sees it in the spec (Go's compact JSON)
    and starts no interpreter, whose start would count in the downtime (here it could not start: it fails)."""
    directory, _images = stub
    (directory / RUNTIME_CRIU_CONFIG).write_text("/var/spool/androcond/criu-restore.conf")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = '{"ociVersion":"1.0.2","annotations":{"org.criu.config":"/var/spool/androcond/criu-restore.conf"}}'
    (bundle / "config.json").write_text(spec)
    args = _call(fake_runc, "restore", "--bundle", str(bundle), "--image-path", str(directory), "cid",
                 python="/bin/false")
    assert args[0] == "restore" and (bundle / "config.json").read_text() == spec
    # Another configuration named there: the interpreter is needed, and its failure fails the restore.
    (bundle / "config.json").write_text(spec.replace("criu-restore.conf", "other.conf"))
    with pytest.raises(subprocess.CalledProcessError):
        _call(fake_runc, "restore", "--bundle", str(bundle), "--image-path", str(directory), "cid",
              python="/bin/false")


def _bundle(tmp_path: Path, args: list[str]) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps({
        "process": {"args": args, "env": ["A=1"]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]}))
    return bundle


@pytest.mark.parametrize("init", [False, True])
def test_a_marked_container_is_created_once_with_the_restorer(fake_runc: Path, tmp_path: Path, init: bool) -> None:
    """Home from emulation: the agent's mark (emulated.start leaves it) makes this one `create` run the restorer
    with its directory mounted read-only; the mark is taken, so the next `create` of the same container (a
    restart) runs the container's own program. Under the engine's init, the init stays."""
    own = ["/bin/sh", "-c", "exec /bin/heap"]
    prefix = ["/sbin/docker-init", "--"] if init else []
    bundle = _bundle(tmp_path, prefix + own)
    marks, files = tmp_path / "marks", tmp_path / "spool" / "emulated" / "m1"
    files.mkdir(parents=True)
    emulated._leave_mark(marks / "cid", files)
    args = ["--root", "/run/r", "create", "--bundle", str(bundle), "--pid-file", "/p", "cid"]
    assert _call(fake_runc, *args, marks=marks) == args
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"] == {"args": prefix + once_argv(), "env": ["A=1"]}
    assert spec["mounts"][-1] == {"destination": MOUNT, "type": "bind", "source": str(files),
                                  "options": ["rbind", "ro"]}
    assert len(spec["mounts"]) == 2 and not (marks / "cid").exists()

    bundle = _bundle(tmp_path, prefix + own)  # started again by its engine
    _call(fake_runc, *args, marks=marks)
    assert json.loads((bundle / "config.json").read_text())["process"]["args"] == prefix + own


def test_only_the_marked_containers_create_is_changed(fake_runc: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    emulated._leave_mark(marks / "other", tmp_path)
    bundle = _bundle(tmp_path, ["/bin/app"])
    before = (bundle / "config.json").read_text()
    for args in (["create", "--bundle", str(bundle), "cid"], ["start", "other"], ["delete", "other"]):
        assert _call(fake_runc, *args, marks=marks, python="/bin/false") == args
    assert (bundle / "config.json").read_text() == before and (marks / "other").exists()


def test_a_mark_that_cannot_be_applied_fails_the_create(fake_runc: Path, tmp_path: Path) -> None:
    """No spec where the bundle should be: runc is not run (the agent sees the start fail and rolls back)."""
    marks = tmp_path / "marks"
    emulated._leave_mark(marks / "cid", tmp_path)
    with pytest.raises(subprocess.CalledProcessError):
        _call(fake_runc, "create", "--bundle", str(tmp_path / "absent"), "cid", marks=marks)
