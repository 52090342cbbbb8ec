"""A fast freeze: CRIU through runc directly instead of through the engine.

`docker checkpoint create` sends the images through containerd's content store, which costs seconds per
hundred MB; `runc checkpoint` writes them straight to a directory in a fraction of that. The images land in
the engine's own checkpoint directory of the container, so `docker start --checkpoint` (the rollback) finds
them exactly as if the engine had made them.

Used only when it is safe: the container's runc state is where the config says, and it has no restart
policy (the engine would restart a container whose task runc stopped behind its back).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from ..aio import run
from ..errors import AndrocondError

RUNC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHECKPOINT_TIMEOUT_S = 600.0


class RuncError(AndrocondError):
    pass


def usable(runc_root: Path, container_id: str) -> bool:
    """runc knows the container, and is here. (Its restart policy must be lifted first: once runc's checkpoint
    stops it, the engine would start it afresh.)"""
    return (runc_root / container_id / "state.json").is_file() and shutil.which("runc", path=RUNC_PATH) is not None


async def checkpoint(runc_root: Path, container_id: str, image_dir: Path) -> None:
    """Dump the container's processes into image_dir and stop them (runc checkpoint, CRIU underneath)."""
    runc = shutil.which("runc", path=RUNC_PATH)
    if runc is None:
        raise RuncError("runc is not installed")
    await asyncio.to_thread(image_dir.mkdir, parents=True, exist_ok=False)
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="androcond-criu-"))
    try:
        done = await run([runc, "--root", str(runc_root), "checkpoint", "--image-path", str(image_dir),
                          "--work-path", str(work), container_id], timeout_s=CHECKPOINT_TIMEOUT_S,
                         env={"PATH": RUNC_PATH})
        if done.returncode != 0:
            log_tail = await asyncio.to_thread(_tail, work / "dump.log")
            # A half-written dump is never restored: remove it (off the loop: it can be hundreds of MB).
            await asyncio.to_thread(shutil.rmtree, image_dir, True)
            raise RuncError(f"runc checkpoint failed ({done.returncode}): {done.text()} {log_tail}")
    finally:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, True))


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
