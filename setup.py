"""Packaging builds androcond's emulation restorer (an x86_64 program without libc, from
androcond/emulation/restorer.c) so that the wheel ships it as package data; everything else is in
pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildRestorer(build_py):
    def run(self) -> None:
        # Built beside its source first, so the package data below picks it up.
        subprocess.run([sys.executable, "-m", "androcond.emulation.build"], check=True,
                       cwd=Path(__file__).parent)
        super().run()


setup(cmdclass={"build_py": BuildRestorer})
