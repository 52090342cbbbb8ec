"""A build's version: the release and a digest of the package's Python sources, the same for a checkout, a
wheel and the agent file of the same code, different when any source differs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import androcond
from androcond.build import build_version, source_digest

PACKAGE = Path(androcond.__file__).parent


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "androcond"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_version_is_the_release_and_the_sources_digest() -> None:
    assert re.fullmatch(rf"{re.escape(androcond.__version__)}\+[0-9a-f]{{12}}", build_version())
    assert build_version().endswith("+" + source_digest(PACKAGE))


def test_bytecode_and_data_do_not_change_it_a_source_does(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    before = source_digest(copy)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0" * 16)
    (copy / "BUILD").write_text("whatever\n")
    assert source_digest(copy) == before
    agent = copy / "agent" / "session.py"
    agent.write_text(agent.read_text() + "\n# changed\n")
    assert source_digest(copy) != before
    renamed = _copy(tmp_path / "renamed")
    (renamed / "build.py").rename(renamed / "build2.py")
    assert source_digest(renamed) != before
