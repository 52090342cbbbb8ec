"""Helpers shared by tests: counter containers, log polling, a daemon subprocess that is read line by line."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from androcond.engine import Engine

from .testbed.bed import TEST_LABEL, TEST_RUN
from .testbed.images import TEST_IMAGE

_COUNT = re.compile(r"^count (\d+)\b", re.MULTILINE)


def counter_config(**labels: str) -> dict[str, Any]:
    return {"Image": TEST_IMAGE, "Cmd": ["/bin/counter"], "Labels": {TEST_LABEL: TEST_RUN, **labels}}


def counts(logs: str) -> list[int]:
    return [int(n) for n in _COUNT.findall(logs)]


async def wait_for_count(engine: Engine, ref: str, at_least: int, timeout: float = 30) -> list[int]:
    """Poll the container's logs until its counter reached at_least (a readiness check, not a sleep)."""
    async with asyncio.timeout(timeout):
        while True:
            seen = counts(await engine.container_logs(ref))
            if seen and seen[-1] >= at_least:
                return seen
            await asyncio.sleep(0.05)


async def start_counting(engine: Engine, config: dict[str, Any], name: str, at_least: int = 2,
                         timeout: float = 60) -> int:
    """Create and start a counter container and wait until it counted to at_least; the last count seen.

    A test that compares the counter before and after a move (or a rollback) needs a count from before the
    freeze: a labelled one is started this way before the daemon, which moves it from its startup scan. The
    first count of a counter that touches a lot of memory first takes a while, hence the generous timeout."""
    cid = await engine.create_container(config, name=name)
    await engine.start_container(cid)
    return (await wait_for_count(engine, cid, at_least=at_least, timeout=timeout))[-1]


class DaemonProcess:
    """`androcond run` as a real subprocess; its JSON log lines are collected as they arrive."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Condition()
        self._eof = False

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "androcond", "run", "--config", str(self.config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=self.env)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            async with self._new_line:
                self.raw.append(text)
                try:
                    self.lines.append(json.loads(text))
                except json.JSONDecodeError:
                    pass
                self._new_line.notify_all()
        async with self._new_line:
            self._eof = True
            self._new_line.notify_all()

    async def wait_for_log(self, match: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            async with self._new_line:
                while True:
                    for entry in self.lines:
                        if match(entry):
                            return entry
                    if self._eof:
                        raise AssertionError("daemon output ended:\n" + "\n".join(self.raw[-30:]))
                    await self._new_line.wait()

        try:
            async with asyncio.timeout(timeout):
                return await find()
        except TimeoutError:
            raise AssertionError("log line not seen; daemon said:\n" + "\n".join(self.raw[-30:])) from None

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
