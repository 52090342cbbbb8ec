"""The system packages the bed needs, read from the one list (scripts/system-packages.txt), checked by what
each provides: a part that finds one missing names its package instead of failing later on a missing file."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .proc import TestBedError

PACKAGE_LIST = Path(__file__).resolve().parents[2] / "scripts" / "system-packages.txt"
SEARCH_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"))


@dataclass(frozen=True)
class SystemPackage:
    name: str
    suite: str
    provides: str  # a command on PATH, or an absolute path

    def present(self) -> bool:
        if self.provides.startswith("/"):
            return Path(self.provides).exists()
        return shutil.which(self.provides, path=SEARCH_PATH) is not None


def system_packages(path: Path = PACKAGE_LIST) -> dict[str, SystemPackage]:
    packages = {}
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            name, suite, provides = fields[:3]
            packages[name] = SystemPackage(name, suite, provides)
    return packages


def require(names: Iterable[str]) -> None:
    """Raise naming every package of `names` whose file or command is missing (and what installs it)."""
    listed = system_packages()
    unknown = [n for n in names if n not in listed]
    if unknown:
        raise TestBedError(f"not in {PACKAGE_LIST.name}: {', '.join(unknown)}")
    missing = [listed[n] for n in names if not listed[n].present()]
    if missing:
        what = ", ".join(f"{p.provides} (package {p.name})" for p in missing)
        raise TestBedError(f"missing {what}: run scripts/install-system.sh as root")
