"""Before anything is frozen: can this container's processes be recoded for the target ISA?

A cross-ISA move needs every process to run a Popcorn binary `<bin>` with `__migrate_gb_variable` (for the
notify), and `<bin>_x86-64` and `<bin>_aarch64` beside it, each of its ISA, linked at fixed addresses and
carrying `regs_dst` and `tls_dst`. Same-ISA moves need nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..popcorn.notify import MIGRATE_VARIABLE, REGS_DST, TLS_DST
from .arch import VARIANT_SUFFIX, exe_path
from .elf import POPCORN_SYMBOLS, popcorn_problems, read_elf
from .imageset import RecodeError

ISAS = ("x86_64", "aarch64")
RECODED = (("x86_64", "aarch64"), ("aarch64", "x86_64"))  # the way out and the way back


@dataclass(frozen=True)
class Problem:
    pid: int | None
    exe: str
    reason: str

    def __str__(self) -> str:
        who = f"process {self.pid} " if self.pid is not None else ""
        return f"{who}({self.exe}): {self.reason}"


class RecodeRefused(RecodeError):
    """The preflight found processes that cannot be recoded for the target; lists every one."""

    def __init__(self, target: str, problems: list[Problem]) -> None:
        self.target = target
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems)
        super().__init__(f"cannot recode for {target}:\n  {lines}")


def check_executable(root: str | Path, name: str, source: str, target: str, pid: int | None = None) -> list[Problem]:
    """Problems that stop the executable `name` (as the task sees it, under `root`) from moving to `target`."""
    if target not in ISAS or source not in ISAS:
        return [Problem(pid, name, f"unsupported ISA pair {source} -> {target}")]
    if source == target:
        return []
    if (source, target) not in RECODED:
        return [Problem(pid, name, f"recode {source} -> {target} is not implemented")]
    if name.endswith(" (deleted)"):
        return [Problem(pid, name, "the executable was deleted after it started")]
    problems: list[Problem] = []
    try:
        binary = exe_path(Path(root), name)
    except RecodeError as exc:
        return [Problem(pid, name, str(exc))]
    wants = [(binary, None, (MIGRATE_VARIABLE,))] + [
        (binary.with_name(binary.name + VARIANT_SUFFIX[isa]), isa, (REGS_DST, TLS_DST)) for isa in (source, target)
    ]
    for path, isa, symbols in wants:
        if not path.is_file():
            problems.append(Problem(pid, name, f"{path.name} missing beside it"))
            continue
        try:
            info = read_elf(path, POPCORN_SYMBOLS)
        except RecodeError as exc:
            problems.append(Problem(pid, name, str(exc)))
            continue
        problems += [Problem(pid, name, reason) for reason in popcorn_problems(info, isa, symbols)]
    return problems


def preflight_processes(pids: Iterable[int], source: str, target: str, *,
                        proc: str | Path = "/proc") -> list[str]:
    """Check live processes (host pids) through /proc; raises RecodeRefused listing every problem. Returns
    their executables as the tasks see them (each once, sorted)."""
    problems: list[Problem] = []
    names: set[str] = set()
    base = Path(proc)
    for pid in pids:
        try:
            name = os.readlink(base / str(pid) / "exe")
        except OSError as exc:
            problems.append(Problem(pid, "?", f"cannot read its executable: {exc.strerror or exc}"))
            continue
        names.add(name)
        problems += check_executable(base / str(pid) / "root", name, source, target, pid)
    if problems:
        raise RecodeRefused(target, problems)
    return sorted(names)
