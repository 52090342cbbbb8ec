"""`androcond images show|roundtrip` on a real CRIU 4 dump and on broken input: output and exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from androcond.cli.main import main

from .conftest import RealDump


def test_show_json_is_one_document(real_dump: RealDump, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["images", "show", str(real_dump.images / "pstree.img"), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    shown = json.loads(out)
    assert shown["magic"] == "PSTREE" and shown["entries"][0]["pid"] == real_dump.pid


def test_roundtrip_reports_identity_and_reencoding_differences(real_dump: RealDump,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["images", "roundtrip", str(real_dump.images), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result and all(diff is None for diff in result.values())
    # Re-serializing every message moves unknown fields after declared ones (CRIU-IMAGES.md section 6):
    # the files where that happens are named, with the offset of the first differing byte.
    assert main(["images", "roundtrip", str(real_dump.images), "--reencode"]) == 1
    out = capsys.readouterr().out
    assert f"core-{real_dump.pid}.img: first difference at byte offset " in out


def test_broken_image_names_file_and_offset(real_dump: RealDump, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "images"
    shutil.copytree(real_dump.images, broken)
    core = broken / f"core-{real_dump.pid}.img"
    core.write_bytes(core.read_bytes()[:-5])
    assert main(["images", "roundtrip", str(broken)]) == 1
    err = capsys.readouterr().err
    assert f"core-{real_dump.pid}.img: at byte offset 8 (0x8): entry of " in err and "runs past end of file" in err
    assert main(["images", "show", str(core)]) == 1
    assert "runs past end of file" in capsys.readouterr().err
    assert main(["images", "show", str(tmp_path / "missing.img")]) == 1
