"""The program `devices setup` runs on a device to change the engine's daemon.json (provision/setup.py), run here
with this Python on a real file: it keeps what else is in the file, says what it found, and `undo` puts back
exactly that."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from androcond.provision.setup import ENGINE_CONFIG_PY

RUNTIME = "/data/androcond/androcond-runc"


def run(mode: str, path: Path, arg: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", ENGINE_CONFIG_PY, mode, str(path), arg], capture_output=True,
                          text=True, check=True)
    answer: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
    return answer


def test_set_keeps_the_rest_and_undo_puts_back_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    original = {"log-driver": "local", "runtimes": {"crun": {"path": "/usr/bin/crun"}}, "experimental": False}
    path.write_text(json.dumps(original))
    before = run("set", path, RUNTIME)
    assert before == {"runtime": None, "experimental": False, "existed": True, "changed": True}
    conf = json.loads(path.read_text())
    assert conf == {"log-driver": "local", "experimental": True,
                    "runtimes": {"crun": {"path": "/usr/bin/crun"}, "androcond": {"path": RUNTIME}}}
    again = run("set", path, RUNTIME)
    assert again["changed"] is False
    assert run("undo", path, json.dumps(before))["changed"] is True
    assert json.loads(path.read_text()) == original


def test_a_file_that_setup_created_is_removed_by_undo(tmp_path: Path) -> None:
    path = tmp_path / "docker" / "daemon.json"
    before = run("set", path, RUNTIME)
    assert before["existed"] is False
    assert json.loads(path.read_text()) == {"runtimes": {"androcond": {"path": RUNTIME}}, "experimental": True}
    run("undo", path, json.dumps(before))
    assert not path.exists()


def test_unregister_keeps_an_empty_runtimes_key_for_dockerds_reload(tmp_path: Path) -> None:
    path = tmp_path / "daemon.json"
    before = run("set", path, RUNTIME)
    run("unregister", path, "-")
    assert json.loads(path.read_text()) == {"runtimes": {}, "experimental": True}
    run("undo", path, json.dumps(before))
    assert not path.exists()
