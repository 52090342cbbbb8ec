"""Small asyncio helpers for work that must not be abandoned halfway: awaited to its end though the caller is
cancelled (`complete`), and a subprocess run under a deadline that is killed and reaped, never left running
behind our back (`run`). Shared by the daemon and the agent."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import AndrocondError

T = TypeVar("T")


async def complete(work: Awaitable[T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile, then let the cancellation go on.

    For cleanup, and for thread work whose effects (an open fd, a file made) must be known before anything
    else touches them: a cancelled `to_thread` leaves its thread running unseen. Only for bounded work; the
    task is owned here and always awaited.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])  # unlike awaiting the task, a cancellation of ours does not reach it
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        failure = None if task.cancelled() else task.exception()
        raise asyncio.CancelledError() from failure
    return task.result()


class CommandTimeout(AndrocondError, TimeoutError):
    """A command did not finish within its deadline (it was killed)."""

    def __init__(self, argv: Sequence[str], seconds: float) -> None:
        super().__init__(f"{' '.join(argv[:3])}{'…' if len(argv) > 3 else ''} did not finish within {seconds:g}s")
        self.seconds = seconds


@dataclass(frozen=True)
class Finished:
    returncode: int
    output: bytes  # stdout, with stderr too when merged
    errors: bytes = b""  # stderr when kept apart

    def text(self, limit: int = 500) -> str:
        return (self.output + self.errors).decode(errors="replace").strip()[-limit:]


async def run(argv: Sequence[str], *, timeout_s: float, stderr: str = "merge", stdout: bool = True,
              env: Mapping[str, str] | None = None) -> Finished:
    """Run `argv` to its end under a deadline. On the deadline (CommandTimeout) or a cancellation, the process
    is killed and reaped first. `stderr`: "merge" into the output, "keep" apart, or "discard"; `stdout=False`
    discards it (for a command that forks a daemon which would hold the pipe open). An argv[0] that cannot run
    raises OSError (FileNotFoundError when absent)."""
    err = {"merge": subprocess.STDOUT, "keep": subprocess.PIPE, "discard": subprocess.DEVNULL}[stderr]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                                stderr=err, env=dict(env) if env is not None else None)
    try:
        async with asyncio.timeout(timeout_s):
            out, errors = await proc.communicate()
    except BaseException as exc:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        if isinstance(exc, TimeoutError):
            raise CommandTimeout(argv, timeout_s) from exc
        raise
    assert proc.returncode is not None
    return Finished(proc.returncode, out or b"", errors or b"")
