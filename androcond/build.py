"""Which androcond this is: its release and a digest of its sources (`0.1.0+3f2a…`). The release number alone
does not tell a daemon from an agent built from other code; at hello each end sees the other's build, and
`androcond devices` says which agents are not this daemon's (`devices setup` upgrades them)."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from pathlib import Path
from typing import Final

from . import __version__

# The agent file (a zipapp) carries its build here, written when it is made: nothing to hash on a phone.
BUILD_FILE: Final = "BUILD"
DIGEST_CHARS: Final = 12


@functools.cache
def build_version() -> str:
    """`release+digest` (blocking the first time: reads the package's sources)."""
    package = resources.files(__package__)
    recorded = package / BUILD_FILE
    if recorded.is_file():
        return recorded.read_text().strip()
    return f"{__version__}+{source_digest(Path(str(package)))}"


def source_digest(package: Path) -> str:
    """SHA-256 over the package's Python sources, by relative path: what a wheel, a checkout and the agent
    file of the same code have in common (bytecode and build files differ among them, the sources do not)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:DIGEST_CHARS]

