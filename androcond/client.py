"""A client of the daemon's HTTP API, for the command line (`androcond migrate`, `androcond migrations`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from .config import Settings
from .errors import AndrocondError
from .journal import TERMINAL

POLL_S = 0.25


class ApiError(AndrocondError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@asynccontextmanager
async def api_session(settings: Settings) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    address = settings.daemon.api
    headers = {}
    if address.startswith("unix:"):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=address[len("unix:"):])
        base = "http://androcond"
    else:
        connector = aiohttp.TCPConnector()
        base = f"http://{address}"
        headers["Authorization"] = f"Bearer {settings.daemon.api_token}"
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        yield session, base


async def call(settings: Settings, method: str, path: str, body: Any = None) -> Any:
    try:
        async with api_session(settings) as (session, base), \
                session.request(method, base + path, json=body) as response:
            text = await response.text()
            try:
                data = json.loads(text)
            except ValueError:
                raise ApiError(f"{method} {path}: {response.status} {text.strip()[:200]}", response.status) from None
            if response.status >= 400:
                message = data.get("error", response.reason) if isinstance(data, dict) else response.reason
                raise ApiError(f"{method} {path}: {response.status} {message}", response.status)
            return data
    except aiohttp.ClientConnectionError as exc:
        raise ApiError(f"cannot reach the androcond daemon at {settings.daemon.api}: {exc} "
                       "(is `androcond run` running, and are you root?)") from exc


async def wait_for(settings: Settings, migration_id: str,
                   on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Poll one migration until it reaches a final state."""
    while True:
        record: dict[str, Any] = await call(settings, "GET", f"/migrations/{migration_id}")
        if on_update is not None:
            on_update(record)
        if record["state"] in TERMINAL:
            return record
        await asyncio.sleep(POLL_S)
