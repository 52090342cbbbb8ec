from __future__ import annotations

import asyncio
import io
import json

import structlog
from structlog.testing import capture_logs

from androcond.logging import configure_logging, get_logger, log_context


def test_json_lines_off_a_terminal_and_secrets_redacted() -> None:
    out = io.StringIO()
    configure_logging("info", "auto", stream=out)  # StringIO is not a tty → JSON
    log = get_logger("androcond.test")
    log.info("webhook configured", url="https://h.example", secret="hunter2",
             headers={"Authorization": "Bearer abc"})
    log.debug("hidden at info level")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1
    entry = lines[0]
    assert entry["msg"] == "webhook configured" and entry["level"] == "info"
    assert entry["component"] == "test"
    assert entry["secret"] == "***" and entry["headers"]["Authorization"] == "***"
    assert "hunter2" not in out.getvalue() and "abc" not in out.getvalue()


async def test_context_is_bound_per_task() -> None:
    log = get_logger("androcond.test")

    async def migrate(name: str, ready: asyncio.Event, go: asyncio.Event) -> None:
        with log_context(container=name):
            ready.set()
            await go.wait()
            log.info("step")

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        go = asyncio.Event()
        ready = [asyncio.Event(), asyncio.Event()]
        async with asyncio.TaskGroup() as tg:
            tg.create_task(migrate("web", ready[0], go))
            tg.create_task(migrate("db", ready[1], go))
            await asyncio.gather(*(r.wait() for r in ready))
            go.set()
    assert sorted(entry["container"] for entry in logs) == ["db", "web"]
