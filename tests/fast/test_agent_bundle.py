"""The agent as one file (`androcond devices bundle`): a zipapp that runs on a Python whose only package is
`cryptography` (with the cffi it brings), imports nothing compiled from anywhere else, and speaks protobuf in
pure Python. Here the interpreter is this one with `-S` (no site-packages) and a path holding only those; on
the arm64 device the guest's own python3 runs it (tests/agent/test_arm64_doctor.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cryptography
import pytest

from androcond.build import build_version
from androcond.provision.bundle import COMPILED, FROM_THE_DEVICE, build, runtime_distributions


@pytest.fixture(scope="module")
def agent_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "androcond-agent.pyz"
    build(out)
    return out


@pytest.fixture(scope="module")
def only_cryptography(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with cryptography, cffi and its backend, and nothing else (links into this environment)."""
    site = Path(cryptography.__file__).parent.parent
    only = tmp_path_factory.mktemp("only-cryptography")
    for entry in site.iterdir():
        if entry.name in ("cryptography", "cffi", "pycparser") or entry.name.startswith("_cffi_backend"):
            (only / entry.name).symlink_to(entry)
    return only


def _bare_python(only: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(only)}
    return subprocess.run([sys.executable, "-S", *argv], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_the_file_holds_no_compiled_code_and_not_what_the_device_brings(agent_file: Path) -> None:
    names = zipfile.ZipFile(agent_file).namelist()
    assert "__main__.py" in names and "androcond/agent/server.py" in names
    assert not [n for n in names if n.endswith(COMPILED)]
    tops = {n.split("/")[0] for n in names}
    assert not tops & FROM_THE_DEVICE
    assert {"asyncssh", "aiohttp", "structlog", "google", "yarl", "multidict"} <= tops
    assert set(runtime_distributions()) >= {"asyncssh", "aiohttp", "protobuf", "structlog", "yarl"}


def test_it_runs_on_a_python_with_only_cryptography(agent_file: Path, only_cryptography: Path) -> None:
    done = _bare_python(only_cryptography, str(agent_file), "agent", "serve", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: androcond agent serve" in done.stdout
    probe = f"""
import os, sys
sys.path.insert(0, {str(agent_file)!r})
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
import androcond.agent.server, androcond.agent.cli, androcond.agent.page_keeper
from google.protobuf.internal import api_implementation
outside = sorted({{name.split(".")[0] for name, module in list(sys.modules.items())
                  if getattr(module, "__file__", None) and not module.__file__.startswith({str(agent_file)!r})
                  and not module.__file__.startswith(sys.base_prefix)}})
print(api_implementation.Type(), *outside)
"""
    done = _bare_python(only_cryptography, "-c", probe)
    assert done.returncode == 0, done.stderr
    implementation, *outside = done.stdout.split()
    assert implementation == "python"
    assert set(outside) <= {"cryptography", "_cffi_backend", "cffi"}, outside


def test_the_file_names_this_build_and_the_same_sources_make_the_same_bytes(agent_file: Path, tmp_path: Path,
                                                                             only_cryptography: Path) -> None:
    probe = f"import sys; sys.path.insert(0, {str(agent_file)!r}); import androcond.build as b; " \
            "print(b.build_version())"
    done = _bare_python(only_cryptography, "-c", probe)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == build_version()
    # `devices setup` compares digests to decide whether the device's copy is current.
    again = tmp_path / "again.pyz"
    build(again)
    assert again.read_bytes() == agent_file.read_bytes()
