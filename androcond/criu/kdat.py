"""CRIU's kernel probe, kept for the boot where CRIU itself will not keep it.

Every CRIU run starts by probing the kernel (`kerndat`: some thirty features, an `iptables -L`, …), 30–40 ms on
the bed, and a checkpoint or restore on the migration's critical path runs CRIU twice or more (runc's feature
check, then the dump or restore). CRIU keeps the probe for the rest of the boot in /run/criu.kdat, but writes it
only when /run is a tmpfs, so that a reboot drops it. On a host whose /run is a plain directory of the root
filesystem (this bed's machine; some containers and embedded systems) it never writes it, and every run probes
again. It loads an existing file from any filesystem, though. So where /run is not a tmpfs and holds no probe
of this boot, androcond has CRIU probe once inside a private mount namespace whose /run is a tmpfs, and puts
the file it wrote into the real /run: each later CRIU run of the boot loads it, as on a host with a tmpfs /run.
A file older than the boot is probed again (another kernel may have booted since).

Run as `python -m androcond.criu.kdat CRIU` under `unshare --mount --propagation private`, this module is the
probe in that namespace: it prints the file CRIU wrote.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..aio import CommandTimeout, run
from ..logging import get_logger
from .compat import CRIU_PATH

log = get_logger(__name__)
RUN = Path("/run")
KDAT = "criu.kdat"  # CRIU's own name for it (criu/kerndat.c)
PROBE_S = 30.0
# Where this androcond was imported from, for the probe's process to import it too: a site's packages, a
# checkout, or the agent as one file (a zip).
_IMPORTED_FROM = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str


def mounts(mountinfo: str) -> list[Mount]:
    """The mount points and filesystem types of /proc/self/mountinfo's text."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        point = fields[4].replace("\\040", " ")
        found.append(Mount(point, after[0] if after else ""))
    return found


def fstype_of(path: Path, table: list[Mount]) -> str:
    """The type of the filesystem `path` lies on: its deepest mount point (the last one mounted there)."""
    best: Mount | None = None
    text = str(path)
    for mount in table:
        inside = text == mount.point or text.startswith(mount.point.rstrip("/") + "/")
        if inside and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    return best.fstype if best is not None else ""


def boot_time(proc_stat: str) -> float:
    for line in proc_stat.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def why_probe(run_dir: Path, fstype: str, kdat_mtime: float | None, booted: float) -> str:
    """Why androcond should probe for CRIU here, "" when not: a decision on what the caller read."""
    if fstype in ("", "tmpfs"):
        return ""  # no /run (Android), or a tmpfs one, where CRIU keeps its probe itself
    if kdat_mtime is not None and kdat_mtime >= booted:
        return ""
    what = "no probe of this boot" if kdat_mtime is not None else "no probe"
    return f"{run_dir} is {fstype}, not a tmpfs, and holds {what} ({KDAT})"


def _state(run_dir: Path) -> str:
    """Read what why_probe decides on. Blocking."""
    if not run_dir.is_dir():
        return ""
    table = mounts(Path("/proc/self/mountinfo").read_text())
    try:
        mtime: float | None = (run_dir / KDAT).stat().st_mtime
    except FileNotFoundError:
        mtime = None
    return why_probe(run_dir, fstype_of(run_dir.resolve(), table), mtime, boot_time(Path("/proc/stat").read_text()))


def _install(run_dir: Path, data: bytes) -> None:
    """Put the probe in place whole (a CRIU starting now reads the old file or the new one; a daemon and an agent
    starting together each put theirs). Blocking."""
    staged = run_dir / f"{KDAT}.androcond-{os.getpid()}"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)  # as CRIU makes it
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(staged, run_dir / KDAT)


async def keep_probe(run_dir: Path = RUN) -> bool:
    """Where CRIU will not keep its kernel probe, have it probe once and keep the file for it; whether a probe
    was put in place. Best effort: what fails is logged, and CRIU simply probes on each run as before."""
    criu = shutil.which("criu", path=CRIU_PATH)
    if criu is None:
        return False
    try:
        why = await asyncio.to_thread(_state, run_dir)
    except OSError as exc:
        log.warning("could not tell whether CRIU keeps its kernel probe", error=str(exc))
        return False
    if not why:
        return False
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-m", __name__, criu]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (_IMPORTED_FROM, os.environ.get("PYTHONPATH"))))}
    try:
        done = await run(argv, timeout_s=PROBE_S, stderr="keep", env=env)
    except (OSError, CommandTimeout) as exc:
        log.warning("CRIU will probe the kernel on each run", why=why, error=str(exc))
        return False
    if done.returncode != 0 or not done.output:
        log.warning("CRIU will probe the kernel on each run", why=why,
                    error=done.errors.decode(errors="replace").strip()[-300:])
        return False
    try:
        await asyncio.to_thread(_install, run_dir, done.output)
    except OSError as exc:
        log.warning("CRIU will probe the kernel on each run", why=why, error=str(exc))
        return False
    log.info("kept CRIU's kernel probe for this boot", why=why, path=str(run_dir / KDAT))
    return True


def _probe(criu: str) -> int:
    """In a private mount namespace: a tmpfs on /run, CRIU's probe into it, the file to stdout."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "androcond-kdat", str(RUN)], check=True,
                   stdin=subprocess.DEVNULL)
    # Any command that starts CRIU probes; `check` also says what it found, shown when no file came of it.
    checked = subprocess.run([criu, "check"], stdin=subprocess.DEVNULL, capture_output=True, check=False)
    try:
        data = (RUN / KDAT).read_bytes()
    except FileNotFoundError:
        sys.stderr.write(f"{criu} check wrote no {KDAT}: {(checked.stdout + checked.stderr).decode()[-300:]}")
        return 1
    sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(_probe(sys.argv[1]))
