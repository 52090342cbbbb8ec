"""A stopped container's root filesystem, mounted read-only from its overlay2 layers.

A cross-ISA recode reads the tasks' executables (`<bin>_x86-64` symbols, the `<bin>_aarch64` size and build
id) after the freeze, when the engine has already unmounted the container's own root.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .errors import AndrocondError

MOUNT_TIMEOUT_S = 30.0
_unmounts: set[asyncio.Future[None]] = set()


class RootfsError(AndrocondError):
    pass


async def _run(*argv: str) -> None:
    binary = shutil.which(argv[0], path="/usr/bin:/bin:/usr/sbin:/sbin")
    if binary is None:
        raise RootfsError(f"{argv[0]} is not installed")
    proc = await asyncio.create_subprocess_exec(binary, *argv[1:], stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(MOUNT_TIMEOUT_S):
            output, _ = await proc.communicate()
    except BaseException as exc:
        # Timed out or cancelled: the mount must not go on behind our back (nor linger as a zombie).
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            raise RootfsError(f"{' '.join(argv[:3])}… did not finish within {MOUNT_TIMEOUT_S:g}s") from exc
        raise
    if proc.returncode != 0:
        raise RootfsError(f"{' '.join(argv[:3])}…: {output.decode(errors='replace').strip()[-300:]}")


@asynccontextmanager
async def container_root(inspect: dict[str, Any]) -> AsyncIterator[Path]:
    data = (inspect.get("GraphDriver") or {}).get("Data") or {}
    # The writable layer on top, then the image's layers: a read-only overlay needs no upper or work dir.
    layers = [data.get("UpperDir", ""), *str(data.get("LowerDir") or "").split(":")]
    layers = [layer for layer in layers if layer]
    if not layers:
        raise RootfsError("the container has no overlay2 layers to mount")
    mountpoint = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="androcond-root-"))
    try:
        await _run("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={':'.join(layers)}", str(mountpoint))
        try:
            yield mountpoint
        finally:
            unmount = asyncio.ensure_future(_run("umount", str(mountpoint)))
            _unmounts.add(unmount)  # owned: it finishes even if we are cancelled while it runs
            unmount.add_done_callback(_unmounts.discard)
            await asyncio.shield(unmount)
    finally:
        await asyncio.to_thread(mountpoint.rmdir)
