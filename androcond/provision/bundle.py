"""The agent as one file: a zipapp of androcond and the pure-Python code of its runtime dependencies, for a
device's own Python with its own `cryptography` (Termux: python, python-cryptography; Debian: python3,
python3-cryptography), the only compiled module it needs.

Made by hand on `zipapp`, not by shiv or pex: those unpack the archive into a cache on first run and keep
compiled wheels, where a phone's Python needs the opposite (nothing compiled, nothing unpacked). Python cannot
import an extension module from a zip anyway, so the dependencies with optional speed-ups (aiohttp, multidict,
yarl, frozenlist, propcache) run on their pure-Python halves, which they choose on their own when the compiled
one is missing; protobuf is told to (PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python) before anything imports it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipapp
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path, PurePosixPath
from typing import Final

from packaging.requirements import Requirement

import androcond

from ..build import BUILD_FILE, build_version
from ..errors import AndrocondError

# The device brings these (its python3-cryptography pulls cffi); nothing compiled goes in the file.
FROM_THE_DEVICE: Final = frozenset({"cryptography", "cffi", "pycparser"})
COMPILED: Final = (".so", ".pyd", ".dylib")
FIXED_MTIME: Final = 315532800  # 1980-01-01, the earliest time a zip entry holds
MAIN: Final = '''"""androcond's agent, as one file: python3 androcond-agent.pyz agent serve --config FILE"""
import os
import sys

# Pure Python throughout: nothing compiled can be imported from inside a zip.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
for name in ("AIOHTTP", "MULTIDICT", "YARL", "FROZENLIST", "PROPCACHE"):
    os.environ.setdefault(name + "_NO_EXTENSIONS", "1")
from androcond.cli.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


class BundleError(AndrocondError):
    pass


def runtime_distributions() -> list[str]:
    """androcond's runtime dependencies and theirs (markers evaluated here), but what the device brings."""
    seen: set[str] = set()
    todo = ["androcond"]
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        try:
            requirements = distribution(name).requires or []
        except PackageNotFoundError as exc:
            raise BundleError(f"{name} is not installed here: install androcond with its dependencies") from exc
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return sorted(seen - {"androcond"} - FROM_THE_DEVICE)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def _wanted(relative: PurePosixPath) -> bool:
    parts = relative.parts
    return bool(parts) and not parts[0].endswith((".dist-info", ".egg-info", ".data")) and parts[0] != ".." \
        and "__pycache__" not in parts and relative.suffix not in (".pyc", *COMPILED)


def stage(directory: Path) -> None:
    """Lay out the archive's tree in `directory` (blocking)."""
    package = Path(androcond.__file__).parent
    for path in package.rglob("*"):
        relative = PurePosixPath(path.relative_to(package.parent).as_posix())
        if path.is_file() and _wanted(relative):
            _copy(path, directory / relative)
    for name in runtime_distributions():
        dist = distribution(name)
        for file in dist.files or []:
            relative = PurePosixPath(str(file))
            if _wanted(relative):
                _copy(Path(str(dist.locate_file(file))), directory / relative)
    (directory / "__main__.py").write_text(MAIN)
    (directory / "androcond" / BUILD_FILE).write_text(build_version() + "\n")
    # The same sources make the same bytes (setup compares digests to know whether the device's copy is current):
    # zipapp stores each file's mtime, so every one gets the same.
    for path in directory.rglob("*"):
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def build(out: Path) -> int:
    """Write the agent's file to `out` (blocking); its size in bytes."""
    with tempfile.TemporaryDirectory(prefix="androcond-bundle-") as tmp:
        stage(Path(tmp))
        partial = out.with_name(out.name + ".partial")
        zipapp.create_archive(tmp, partial, interpreter="/usr/bin/env python3", compressed=True)
        os.replace(partial, out)
    return out.stat().st_size
