"""Identity recode (same ISA, no profile): a real dump passes through unchanged and restores."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from androcond.cli.main import main
from androcond.images import image_files
from androcond.recoder import RecodeOptions, recode_async

from ..images.conftest import find_criu
from .conftest import Builds, CrossDump, Process, criu_dump, wait_until


def numbers(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def test_identity_recode_restores_and_the_program_continues(builds: Builds, tmp_path: Path,
                                                           processes: list[Process],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "ticks"
    proc = Process([str(builds.ticker), str(log)])
    processes.append(proc)
    proc.wait_for(lambda: log.exists() and len(numbers(log)) >= 3, "ticks")
    criu_dump(proc.pid, tmp_path / "images")
    proc.proc.wait(timeout=10)
    before = numbers(log)

    out = tmp_path / "out"
    assert main(["images", "recode", str(tmp_path / "images"), str(out), "--target", "x86_64"]) == 0
    assert "x86_64 -> x86_64 (identity)" in capsys.readouterr().out
    for path in image_files(tmp_path / "images"):
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name

    pidfile = tmp_path / "restored.pid"
    result = subprocess.run([find_criu(), "restore", "-D", str(out), "-W", str(tmp_path), "-d",
                             "--pidfile", str(pidfile), "-o", "restore.log"],
                            capture_output=True, text=True, timeout=60, check=False)
    log_text = (tmp_path / "restore.log").read_text(errors="replace")[-3000:] if result.returncode else ""
    assert result.returncode == 0, f"{result.stderr}\n{log_text}"
    restored = int(pidfile.read_text())
    try:
        wait_until(lambda: len(numbers(log)) >= len(before) + 3, "ticks after the restore")
        after = numbers(log)
        assert after == list(range(1, len(after) + 1)), "continues from where it was dumped, no restart"
    finally:
        os.kill(restored, signal.SIGKILL)


async def test_recode_async_runs_off_the_loop(builds: Builds, tmp_path: Path, processes: list[Process]) -> None:
    log = tmp_path / "ticks"
    proc = Process([str(builds.ticker), str(log)])
    processes.append(proc)
    proc.wait_for(lambda: log.exists() and len(numbers(log)) >= 1, "ticks")
    criu_dump(proc.pid, tmp_path / "images")
    report = await recode_async(tmp_path / "images", tmp_path / "out", RecodeOptions(target="x86_64"))
    assert report.stages == [] and report.stats.rewritten == []
    assert report.stats.files_copied == len(image_files(tmp_path / "images"))
    assert report.stats.bytes_written == sum(p.stat().st_size for p in image_files(tmp_path / "images"))


def test_recode_refuses_bad_arguments(cross_dump: CrossDump, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    assert main(["images", "recode", str(src), str(tmp_path / "out"), "--target", "x86_64"]) == 1
    assert "not a CRIU dump directory" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    assert main(["images", "recode", str(cross_dump.images), str(tmp_path / "full"), "--target", "x86_64"]) == 1
    assert "output directory is not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep").read_text() == "mine"
    assert main(["images", "recode", str(cross_dump.images), str(tmp_path / "out"), "--target", "aarch64"]) == 1
    assert "needs the target's vdso image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["images", "recode", str(src), str(tmp_path / "out"), "--target", "sparc"])
    assert usage.value.code == 2
