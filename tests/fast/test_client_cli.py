"""The CLI verbs that use the API (`migrate`, `migrations`, `migrations show`), end to end against a small
fake API on a unix socket: `python -m androcond` runs as a user runs it, under a pseudo-terminal or piped."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import signal
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from androcond.cli.views import fmt_when

MB = 1_000_000
MIGRATION_ID = "5e1d0c3b2a1f4e6d8c7b9a0f1e2d3c4b"
OLD_ID = "9a8b7c6d5e4f40312a1b0c9d8e7f6a5b"
REDRAW = "\r\x1b[2K"
HIDE, SHOW = "\x1b[?25l", "\x1b[?25h"
DEADLINE = 60.0


def record(state: str, sent: int = 0, expected: int | None = None, **more: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": MIGRATION_ID, "container_id": "ab" * 32, "container_name": "counter",
                           "device": "pixel", "origin": "api", "state": state, "keep_source": False,
                           "checkpoint_name": "", "target_container_id": "", "error": "", "bytes_sent": sent,
                           "timings": {}, "created_at": 1_700_000_000.0, "updated_at": 1_700_000_000.0}
    if expected is not None:  # served only while the migration runs, as the real API does
        rec["bytes_expected"] = expected
        rec["files_sent"] = 0
    rec.update(more)
    return rec


TRANSITIONS = [{"state": s, "at": 1_700_000_000.0 + i * 0.5, "detail": ""}
               for i, s in enumerate(["requested", "preflight", "checkpointing", "streaming", "restoring", "done"])]
DONE = record("done", 240 * MB, timings={"downtime_s": 1.25, "total_s": 4.5, "checkpoint_s": 0.3},
              target_container_id="cd" * 32, transitions=TRANSITIONS)
# What successive GET /migrations/{id} answer: the migration advances one step per poll.
SCRIPT = [
    record("requested"),
    record("preflight", expected=0),
    record("preflight", expected=240 * MB),
    record("checkpointing", expected=240 * MB),
    *(record("streaming", n * 30 * MB, 240 * MB) for n in range(1, 8)),
    record("restoring", 240 * MB, 240 * MB),
    DONE,
]
SHORT = [SCRIPT[0], SCRIPT[5], DONE]  # where the bar is not looked at: three polls
OLD = record("rolled-back", 12 * MB, id=OLD_ID, container_name="db", error="stream: the agent stopped answering",
             timings={"total_s": 31.0}, created_at=1_699_999_000.0,
             transitions=[{"state": "requested", "at": 1_699_999_000.0, "detail": ""},
                          {"state": "rolling-back", "at": 1_699_999_030.0, "detail": "stream: idle"},
                          {"state": "rolled-back", "at": 1_699_999_031.0, "detail": ""}])


@dataclass
class FakeApi:
    """GET/POST /migrations and GET /migrations/{id}, with canned records that advance on every poll."""

    socket: Path
    script: list[dict[str, Any]]
    polls: int = 0
    posted: list[dict[str, Any]] = field(default_factory=list)

    def current(self) -> dict[str, Any]:
        return self.script[min(self.polls, len(self.script) - 1)]

    async def create(self, request: web.Request) -> web.Response:
        self.posted.append(await request.json())
        return web.json_response(self.script[0], status=202)

    async def list(self, _request: web.Request) -> web.Response:
        listed = [{k: v for k, v in r.items() if k != "transitions"} for r in (self.current(), OLD)]
        return web.json_response({"migrations": listed})

    async def get(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        if wanted == OLD_ID:
            return web.json_response(OLD)
        if wanted != MIGRATION_ID:
            return web.json_response({"error": "no such migration"}, status=404)
        body = self.current()
        self.polls += 1
        return web.json_response(body)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[FakeApi]:
    fake = FakeApi(tmp_path / "api.sock", list(SCRIPT))
    app = web.Application()
    app.router.add_get("/migrations", fake.list)
    app.router.add_post("/migrations", fake.create)
    app.router.add_get("/migrations/{id}", fake.get)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.UnixSite(runner, str(fake.socket)).start()
    try:
        yield fake
    finally:
        await runner.cleanup()


def write_config(tmp_path: Path, api: FakeApi) -> Path:
    config = tmp_path / "androcond.toml"
    config.write_text(f'[daemon]\napi = "unix:{api.socket}"\nstate_dir = "{tmp_path / "state"}"\n')
    return config


def child_env() -> dict[str, str]:
    """A terminal rich recognises whatever the environment running the tests says."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES",
                        "ANDROCOND_CONFIG")}
    env["TERM"] = "xterm-256color"
    return env


async def run_in_pty(*args: str, interrupt_after_renders: int | None = None) -> tuple[int, str]:
    """Run `python -m androcond ARGS` with stdin, stdout and stderr on a 120x40 pseudo-terminal; what the
    terminal showed, and the exit code. interrupt_after_renders: send SIGINT once the bar was drawn that often."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "androcond", *args, stdin=child,
                                                stdout=child, stderr=child, env=child_env())
    os.close(child)
    screen = bytearray()
    loop = asyncio.get_running_loop()
    interrupted = False
    try:
        async with asyncio.timeout(DEADLINE):
            while True:
                try:
                    chunk = await loop.run_in_executor(None, os.read, main, 4096)
                except OSError:  # EIO: every holder of the child side has closed it
                    break
                if not chunk:
                    break
                screen += chunk
                if interrupt_after_renders is not None and not interrupted \
                        and screen.decode(errors="replace").count(REDRAW) >= interrupt_after_renders:
                    proc.send_signal(signal.SIGINT)
                    interrupted = True
            code = await proc.wait()
    finally:
        os.close(main)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return code, screen.decode(errors="replace")


def without_styles(screen: str) -> str:
    """The text, without the colours and weights (SGR sequences) rich adds on a terminal."""
    return re.sub(r"\x1b\[[0-9;]*m", "", screen)


async def run_piped(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "androcond", *args,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=child_env())
    async with asyncio.timeout(DEADLINE):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_migrate_wait_on_a_terminal_draws_a_moving_bar(tmp_path: Path, api: FakeApi) -> None:
    config = write_config(tmp_path, api)
    code, screen = await run_in_pty("migrate", "counter", "--to", "pixel", "--wait", "--config", str(config))
    assert code == 0, screen
    assert api.posted == [{"container": "counter", "device": "pixel", "keep_source": False}]
    frames = [f.strip() for f in without_styles(screen).removeprefix(HIDE).split(REDRAW)]
    assert len(frames) >= 8, screen  # drawn in place, once per poll
    # The phases in order, each frame starting with the migration and its phase.
    phases = [m.group(1) for f in frames if (m := re.match(r"counter → pixel (\S+)", f))]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        "requested", "preflight", "checkpointing", "streaming", "restoring", "done"]
    percentages = [int(m.group(1)) for f in frames if (m := re.search(r"\b(\d{1,3})%", f))]
    assert len(set(percentages)) >= 5 and percentages == sorted(percentages) and percentages[-1] == 100
    assert any(re.search(r"\d+\.\d MB / 240\.0 MB +[\d.]+ [kMG]B/s +\d+:\d\d left", f) for f in frames), screen
    # The bar stopped cleanly (cursor back), then the outcome line.
    assert screen.count(HIDE) == 1 and screen.rindex(SHOW) > screen.rindex(HIDE)
    assert "counter → pixel: done, downtime 1.25s, total 4.50s, 240.0 MB sent" in screen
    assert "Traceback" not in screen


async def test_migrate_wait_json_without_a_terminal_prints_one_document(tmp_path: Path, api: FakeApi) -> None:
    api.script = SHORT
    config = write_config(tmp_path, api)
    code, out, err = await run_piped("migrate", "counter", "--to", "pixel", "--wait", "--json",
                                     "--config", str(config))
    assert code == 0, err
    assert err == ""
    assert json.loads(out) == DONE  # exactly one JSON document, the final record


async def test_migrate_wait_json_on_a_terminal_draws_no_bar(tmp_path: Path, api: FakeApi) -> None:
    api.script = SHORT
    config = write_config(tmp_path, api)
    code, screen = await run_in_pty("migrate", "counter", "--to", "pixel", "--wait", "--json",
                                    "--config", str(config))
    assert code == 0, screen
    assert "\x1b" not in screen
    assert json.loads(screen) == DONE


async def test_migrate_wait_piped_prints_the_outcome_line_only(tmp_path: Path, api: FakeApi) -> None:
    api.script = SHORT
    config = write_config(tmp_path, api)
    code, out, err = await run_piped("migrate", "counter", "--to", "pixel", "--wait", "--config", str(config))
    assert code == 0, err
    assert (out, err) == ("counter → pixel: done, downtime 1.25s, total 4.50s, 240.0 MB sent\n", "")


async def test_migrate_wait_rolled_back_exits_1_with_the_reason(tmp_path: Path, api: FakeApi) -> None:
    api.script = [*SCRIPT[:6], record("rolling-back", 90 * MB, 240 * MB),
                  record("rolled-back", 90 * MB, error="stream: the agent stopped answering",
                         timings={"total_s": 3.5})]
    config = write_config(tmp_path, api)
    code, screen = await run_in_pty("migrate", "counter", "--to", "pixel", "--wait", "--config", str(config))
    assert code == 1
    assert "counter → pixel: rolled-back, total 3.50s, 90.0 MB sent: stream: the agent stopped answering" in screen
    assert screen.rindex(SHOW) > screen.rindex(HIDE)


async def test_ctrl_c_stops_the_bar_cleanly(tmp_path: Path, api: FakeApi) -> None:
    api.script = [record("streaming", n * MB, 10_000 * MB) for n in range(1, 10_000)]  # never ends
    config = write_config(tmp_path, api)
    code, screen = await run_in_pty("migrate", "counter", "--to", "pixel", "--wait", "--config", str(config),
                                    interrupt_after_renders=4)
    assert code == 1
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen
    assert screen.count(HIDE) == 1 and screen.rindex(SHOW) > screen.rindex(HIDE)  # the cursor is back
    bar_end = screen.rindex(SHOW)
    assert screen[:bar_end].endswith("\r\n"), screen[-300:]  # the last frame ended its line
    assert f"androcond: interrupted; migration {MIGRATION_ID} goes on in the daemon " \
           f"(`androcond migrations show {MIGRATION_ID[:12]}`)" in screen[bar_end:]


async def test_migrations_lists_a_table_and_json(tmp_path: Path, api: FakeApi) -> None:
    api.polls = len(SCRIPT)  # the migration is done
    config = write_config(tmp_path, api)
    code, out, err = await run_piped("migrations", "--config", str(config))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["WHEN", "ID", "CONTAINER", "DEVICE", "STATE", "DOWNTIME", "TOTAL", "SIZE", "REASON"]
    assert lines[1].split() == [*fmt_when(1_700_000_000.0).split(), MIGRATION_ID[:12], "counter", "pixel", "done",
                                "1.25s", "4.50s", "240.0", "MB"]
    assert lines[2].split()[:10] == [*fmt_when(1_699_999_000.0).split(), OLD_ID[:12], "db", "pixel", "rolled-back",
                                     "-", "31.00s", "12.0", "MB"]
    assert lines[2].endswith("  stream: the agent stopped answering")

    code, out, _ = await run_piped("migrations", "--json", "--config", str(config))
    assert code == 0
    assert [m["id"] for m in json.loads(out)["migrations"]] == [MIGRATION_ID, OLD_ID]

    code, screen = await run_in_pty("migrations", "--config", str(config))
    assert code == 0
    assert "stream: the agent stopped" in screen and MIGRATION_ID[:8] in screen


async def test_migrations_show(tmp_path: Path, api: FakeApi) -> None:
    config = write_config(tmp_path, api)
    # By a prefix as listed, options before or after `show`.
    code, out, err = await run_piped("migrations", "--config", str(config), "show", OLD_ID[:8])
    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.split("\n\n")[0].splitlines())
    assert fields["id"] == OLD_ID and fields["container"] == "db (abababababab)" and fields["state"] == "rolled-back"
    assert fields["error"] == "stream: the agent stopped answering"
    assert fields["requested"] == fmt_when(1_699_999_000.0) and fields["total"] == "31.00s"
    timeline = out.splitlines()[out.splitlines().index("timeline") + 1:]
    assert [line.split()[:4] for line in timeline] == [
        ["AT", "ELAPSED", "STATE", "DETAIL"],
        [*fmt_when(1_699_999_000.0, millis=True).split(), "0.000s", "requested"],
        [*fmt_when(1_699_999_030.0, millis=True).split(), "30.000s", "rolling-back"],
        [*fmt_when(1_699_999_031.0, millis=True).split(), "31.000s", "rolled-back"]]
    assert timeline[2].endswith("rolling-back  stream: idle")

    code, out, err = await run_piped("migrations", "show", OLD_ID, "--json", "--config", str(config))
    assert code == 0, err
    assert json.loads(out) == OLD

    code, out, err = await run_piped("migrations", "--json", "show", OLD_ID, "--config", str(config))
    assert code == 0 and json.loads(out) == OLD

    code, out, err = await run_piped("migrations", "show", "feedface", "--config", str(config))
    assert (code, out) == (1, "")
    assert err == "androcond: error: no migration with id 'feedface' (`androcond migrations` lists them)\n"


async def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "androcond.toml"
    config.write_text(f'[daemon]\napi = "unix:{tmp_path / "nothing.sock"}"\n')
    started = time.monotonic()
    code, out, err = await run_piped("migrate", "counter", "--to", "pixel", "--wait", "--config", str(config))
    assert code == 1 and out == ""
    assert err.startswith("androcond: error: cannot reach the androcond daemon at unix:")
    assert time.monotonic() - started < DEADLINE
