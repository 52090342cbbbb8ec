"""A stopped container's (or an image's) root filesystem, mounted read-only from its overlay2 layers.

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

from ..aio import CommandTimeout, complete, run
from ..errors import AndrocondError

MOUNT_TIMEOUT_S = 30.0


class RootfsError(AndrocondError):
    pass


async def _run(*argv: str) -> None:
    binary = shutil.which(argv[0], path="/usr/bin:/bin:/usr/sbin:/sbin")
    if binary is None:
        raise RootfsError(f"{argv[0]} is not installed")
    try:
        done = await run([binary, *argv[1:]], timeout_s=MOUNT_TIMEOUT_S)
    except CommandTimeout as exc:  # killed: the mount does not go on behind our back
        raise RootfsError(str(exc)) from exc
    if done.returncode != 0:
        raise RootfsError(f"{' '.join(argv[:3])}…: {done.text(300)}")


@asynccontextmanager
async def container_root(inspect: dict[str, Any]) -> AsyncIterator[Path]:
    data = (inspect.get("GraphDriver") or {}).get("Data") or {}
    # The writable layer on top, then the image's layers: a read-only overlay needs no upper or work dir.
    layers = [data.get("UpperDir", ""), *str(data.get("LowerDir") or "").split(":")]
    layers = [layer for layer in layers if layer]
    if not layers:
        raise RootfsError("the container has no overlay2 layers to mount")
    if len(layers) == 1:  # an image of one layer is its root as it is (overlayfs wants two lower layers)
        yield Path(layers[0])
        return
    mountpoint = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="androcond-root-"))
    try:
        await _run("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={':'.join(layers)}", str(mountpoint))
        try:
            yield mountpoint
        finally:
            await complete(_run("umount", str(mountpoint)))  # to its end even if we are cancelled meanwhile
    finally:
        await asyncio.to_thread(mountpoint.rmdir)
