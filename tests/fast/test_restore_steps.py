"""The device's restore broken down from the agent's clock, the runtime's stamp and CRIU's log (real files)."""

from __future__ import annotations

import os
from pathlib import Path

from androcond.agent import restore_steps

CALLED = 1_000_000.0


def images(tmp_path: Path, *, stamp: str | None = "1000000.120000000", criu_s: float = 0.250,
           log_end: float = CALLED + 0.400) -> Path:
    if stamp is not None:
        (tmp_path / restore_steps.STAMP).write_text(stamp + "\n")
    log = tmp_path / restore_steps.LOG
    log.write_text("(00.000000) Version: 4.2.1\n(00.012345) Restoring\n" + "(00.100000) line\n" * 2000 +
                   f"({criu_s:09.6f}) Restore finished successfully\n")
    os.utime(log, (log_end, log_end))
    return tmp_path


def test_each_step_from_its_clock(tmp_path: Path) -> None:
    steps = restore_steps.read(images(tmp_path), CALLED, CALLED + 0.450)
    # runtime run 0.12 s after the call; CRIU started at 0.15 (its log ends at 0.40 after 0.25 s); answer at 0.45
    assert steps == {"engine": 0.12, "runc": 0.03, "criu": 0.25, "answer": 0.05}


def test_nothing_is_said_without_the_runtimes_stamp_or_a_log(tmp_path: Path) -> None:
    assert restore_steps.read(images(tmp_path, stamp=None), CALLED, CALLED + 0.45) == {}  # the plain restore
    empty = tmp_path / "empty"
    empty.mkdir()
    assert restore_steps.read(empty, CALLED, CALLED + 1) == {}
    (tmp_path / "bad").mkdir()
    assert restore_steps.read(images(tmp_path / "bad", stamp="1000000.N"), CALLED, CALLED + 1) == {}  # no %N


def test_files_of_another_restore_are_not_believed(tmp_path: Path) -> None:
    """A stamp from before the call (a leftover) makes a step negative: nothing rather than a wrong figure."""
    assert restore_steps.read(images(tmp_path, stamp="999990.0"), CALLED, CALLED + 0.45) == {}
