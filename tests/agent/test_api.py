"""The daemon's HTTP API and the command line that uses it, against a running `androcond run`."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import socket
import stat
import struct
import sys
import termios
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from androcond.engine import Engine

from ..helpers import DaemonProcess, counter_config, wait_for_count
from .conftest import AgentBed
from .daemon_bed import running, write_daemon_config

pytestmark = pytest.mark.testbed


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "androcond", *args, "--config", str(config),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_migrate_wait_json_and_migrations(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                tmp_path: Path, unique_name: str) -> None:
    config = write_daemon_config(agent_server, tmp_path)
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "API listening")
        sock = tmp_path / "api.sock"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600, "the API socket must be root-only"
        cid = await engine_a.create_container(counter_config(), name=unique_name)  # no label: asked by hand
        await engine_a.start_container(cid)
        await wait_for_count(engine_a, cid, at_least=3)

        code, out, err = await cli(config, "migrate", unique_name, "--to", "pixel", "--wait", "--json")
        assert code == 0, err
        record = json.loads(out)
        assert record["state"] == "done"
        assert record["origin"] == "api"
        assert record["timings"]["downtime_s"] > 0
        assert [t["state"] for t in record["transitions"]] == [
            "requested", "preflight", "checkpointing", "streaming", "restoring", "done"]
        assert await running(engine_b, unique_name)
        assert not await running(engine_a, unique_name)

        code, out, _ = await cli(config, "migrations", "--json")
        assert code == 0
        assert record["id"] in [m["id"] for m in json.loads(out)["migrations"]]

        code, _, err = await cli(config, "migrate", "no-such-container", "--to", "pixel")
        assert code == 1
        assert "404" in err
        code, _, err = await cli(config, "migrate", unique_name, "--to", "iphone")
        assert code == 1
        assert "unknown device 'iphone'" in err

        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session, \
                session.get("http://androcond/healthz") as response:
            health: dict[str, Any] = await response.json()
        assert response.status == 200
        assert health["engine"] is True
        assert health["journal"] is True
        assert health["following_events"] is True
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tcp_api_needs_the_token(agent_server: AgentBed, tmp_path: Path) -> None:
    port = free_port()
    config = write_daemon_config(agent_server, tmp_path, api=f"127.0.0.1:{port}", api_token="sesame-1234")
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "API listening")
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                async with session.post(f"{base}/migrations", json={"container": "x", "device": "pixel"},
                                        headers=headers) as response:
                    assert response.status == 401
            async with session.get(f"{base}/healthz", headers={"Authorization": "Bearer sesame-1234"}) as response:
                assert response.status == 200
        refused = await daemon.wait_for_log(lambda e: e.get("msg") == "API request refused: no valid credentials")
        assert refused["path"] == "/migrations"
        assert "sesame-1234" not in "\n".join(daemon.raw)
        code, out, err = await cli(config, "migrations", "--json")  # the CLI sends the token from the config
        assert code == 0, err
        assert "migrations" in json.loads(out)
    finally:
        await daemon.kill()


async def test_migrate_wait_on_a_terminal_shows_progress(agent_server: AgentBed, engine_a: Engine,
                                                         tmp_path: Path, unique_name: str) -> None:
    """On a terminal `--wait` draws rich's progress bar on stderr, redrawn in place on every poll (phase, a
    percentage once preflight's estimate is served), stops it cleanly and ends with the downtime and total."""
    config = write_daemon_config(agent_server, tmp_path)
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        await daemon.wait_for_log(lambda e: e.get("msg") == "API listening")
        cid = await engine_a.create_container(counter_config(), name=unique_name)
        await engine_a.start_container(cid)
        await wait_for_count(engine_a, cid, at_least=2)
        main, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        # A terminal rich draws on whatever the environment running the tests says (TERM=dumb: no redraws).
        env = {k: v for k, v in os.environ.items()
               if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS")}
        env["TERM"] = "xterm-256color"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "androcond", "migrate", unique_name, "--to", "pixel", "--wait",
            "--config", str(config), stdin=child, stdout=child, stderr=child, env=env)
        os.close(child)
        screen = bytearray()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(120):
            while True:
                try:
                    chunk = await loop.run_in_executor(None, os.read, main, 4096)
                except OSError:  # EIO: the child side closed
                    break
                if not chunk:
                    break
                screen += chunk
            assert await proc.wait() == 0
        os.close(main)
        text = re.sub(r"\x1b\[[0-9;]*m", "", screen.decode(errors="replace"))  # without colours
        hide, show, redraw = "\x1b[?25l", "\x1b[?25h", "\r\x1b[2K"
        frames = [f.strip() for f in text.removeprefix(hide).split(redraw)]
        assert len(frames) >= 3, text  # redrawn in place, once per poll
        phases = [m.group(1) for f in frames if (m := re.match(rf"{unique_name} → pixel (\S+)", f))]
        assert phases[-1] == "done" and len(set(phases)) >= 2, text
        size = r"[\d.]+ (bytes|[kMGT]B)"
        assert any(re.search(rf"\b\d{{1,3}}% +{size} / {size}", f) for f in frames), text  # the estimate served
        assert text.count(hide) == 1 and text.rindex(show) > text.rindex(hide), text  # the cursor is back
        assert re.search(rf"{unique_name} → pixel: done, downtime [\dhm.]+s, total [\dhm.]+s", text), text
        assert "Traceback" not in text
    finally:
        await daemon.kill()
