"""A client of the daemon's HTTP API, for the command line (`androcond migrate`, `androcond migrations`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp

from ..config import Settings
from ..errors import AndrocondError
from ..migration.journal import TERMINAL

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
                   on_update: Callable[[dict[str, Any]], None] | None = None,
                   *, interval: float = POLL_S) -> dict[str, Any]:
    """Poll one migration until it reaches a final state; `on_update` sees every record polled, the last
    (final) one included, before it is returned."""
    while True:
        record: dict[str, Any] = await call(settings, "GET", f"/migrations/{quote(migration_id, safe='')}")
        if on_update is not None:
            on_update(record)
        if record["state"] in TERMINAL:
            return record
        await asyncio.sleep(interval)


async def find_migration(settings: Settings, id_or_prefix: str) -> dict[str, Any]:
    """One migration's record (with its transitions) by id, or by the first characters of its id as
    `androcond migrations` shows them. Raises ApiError (status 404) when none or several match."""
    try:
        record: dict[str, Any] = await call(settings, "GET", f"/migrations/{quote(id_or_prefix, safe='')}")
        return record
    except ApiError as exc:
        if exc.status != 404:
            raise
    listed: dict[str, Any] = await call(settings, "GET", "/migrations")
    matches = [str(r["id"]) for r in listed["migrations"] if str(r["id"]).startswith(id_or_prefix)] \
        if id_or_prefix else []
    if not matches:
        raise ApiError(f"no migration with id {id_or_prefix!r} (`androcond migrations` lists them)", 404)
    if len(matches) > 1:
        raise ApiError(f"{id_or_prefix!r} is the start of {len(matches)} migration ids "
                       f"({', '.join(m[:16] for m in matches[:5])}): give more of it", 404)
    found: dict[str, Any] = await call(settings, "GET", f"/migrations/{matches[0]}")
    return found
