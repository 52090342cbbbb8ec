"""CRIU's kernel probe kept for it on this machine (system tier: root, CRIU, unshare): once androcond has kept
it, a CRIU run loads it instead of probing the kernel again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from androcond.criu import kdat

from .tiers import unavailable

pytestmark = pytest.mark.system


def _loaded(tmp_path: Path) -> bool:
    log = tmp_path / "check.log"
    subprocess.run(["criu", "check", "-v4", "-o", str(log), "--feature", "uffd-noncoop"], capture_output=True,
                   check=False)
    return "Loaded kdat cache" in log.read_text()


async def test_criu_loads_the_probe_androcond_keeps(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("needs root: CRIU and a private mount namespace")
    if kdat.fstype_of(kdat.RUN.resolve(), kdat.mounts(Path("/proc/self/mountinfo").read_text())) == "tmpfs":
        pytest.skip("/run is a tmpfs here: CRIU keeps its probe itself")  # not this machine's case
    probe = kdat.RUN / kdat.KDAT
    probe.unlink(missing_ok=True)
    assert not _loaded(tmp_path)  # CRIU alone keeps nothing on this /run
    assert await kdat.keep_probe()
    assert _loaded(tmp_path)
    assert probe.stat().st_mode & 0o777 == 0o600
    assert not await kdat.keep_probe()  # this boot's already
    booted = kdat.boot_time(Path("/proc/stat").read_text())
    os.utime(probe, (booted - 60, booted - 60))  # as if left by an earlier boot
    assert await kdat.keep_probe()
    assert probe.stat().st_mtime >= booted and _loaded(tmp_path)
