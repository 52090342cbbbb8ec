"""The daemon's HTTP API (aiohttp): migrations, devices, health.

It can move containers, so it is not open to every local user: on a unix socket (the default) the socket is
root-only (mode 0600) and the peer's uid is checked too; on a TCP address every request needs the bearer
token from the config. A request without the right credentials gets 401 and is logged.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..config import Address, Settings
from ..engine import Engine, EngineError
from ..link.adb import AdbClient
from ..link.devices import probe_all
from ..link.payload import Progress
from ..logging import get_logger
from ..migration.journal import HOME, Journal, JournalError
from .metrics import CONTENT_TYPE, Metrics
from .requests import AlreadyMigrating, MigrationRequest, NotAccepting, Submit

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class ApiState:
    settings: Settings
    journal: Journal
    engine: Engine
    adb: AdbClient
    submit: Submit  # an input beside the watcher: the API asks, the scheduler decides
    in_flight: Callable[[], int]
    live_progress: Callable[[str], Progress | None]
    following: Callable[[], bool]
    metrics: Metrics


STATE = web.AppKey("state", ApiState)


def _peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _auth_middleware(settings: Settings) -> Any:
    token = settings.daemon.api_token
    on_unix = settings.daemon.api.startswith("unix:")

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if on_unix:
            uid = _peer_uid(request)
            allowed = uid is not None and uid in (0, os.geteuid())
        else:
            header = request.headers.get("Authorization", "")
            allowed = token is not None and hmac.compare_digest(header.encode(), f"Bearer {token}".encode())
        if not allowed:
            peer = request.remote or "unix peer"
            log.warning("API request refused: no valid credentials", path=request.path, method=request.method,
                        peer=peer)
            return web.json_response({"error": "unauthorized"}, status=401)
        return await handler(request)

    return authenticate


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    engine_ok, journal_ok = True, True
    try:
        await state.engine.version()
    except EngineError:
        engine_ok = False
    try:
        await state.journal.recent(1)
    except JournalError:
        journal_ok = False
    healthy = engine_ok and journal_ok
    return web.json_response({"status": "ok" if healthy else "degraded", "version": __version__,
                              "engine": engine_ok, "journal": journal_ok,
                              "following_events": state.following(),
                              "migrations_in_flight": state.in_flight()},
                             status=200 if healthy else 503)


def _with_progress(state: ApiState, record: dict[str, Any]) -> dict[str, Any]:
    progress = state.live_progress(record["id"])
    if progress is not None:
        record["bytes_sent"] = progress.bytes_sent
        record["wire_bytes"] = progress.wire_bytes
        record["files_sent"] = progress.files_sent
        record["bytes_expected"] = progress.bytes_expected
    return record


async def list_migrations(request: web.Request) -> web.Response:
    state = request.app[STATE]
    records = await state.journal.recent(200)
    return web.json_response({"migrations": [_with_progress(state, r.as_json()) for r in records]})


async def get_migration(request: web.Request) -> web.Response:
    state = request.app[STATE]
    record = await state.journal.get(request.match_info["id"])
    if record is None:
        return web.json_response({"error": "no such migration"}, status=404)
    body = _with_progress(state, record.as_json())
    body["transitions"] = [{"state": s, "at": at, "detail": d}
                           for s, at, d in await state.journal.transitions(record.id)]
    return web.json_response(body)


@dataclass(frozen=True)
class _Where:
    place: str  # "host" or the device it runs on
    container_id: str  # as that place's engine knows it
    name: str


async def _where(state: ApiState, ref: str) -> _Where:
    """Where a container runs now: on a device if the last move of that name that landed took it there (a
    source kept at home is a stopped copy), else in the host's engine (EngineError 404 when it is in neither)."""
    placed = await state.journal.last_done_for_name(ref.lstrip("/"))
    if placed is not None and placed.device != HOME:
        return _Where(placed.device, placed.target_container_id or placed.container_name, placed.container_name)
    inspect = await state.engine.inspect_container(ref)
    return _Where(HOME, str(inspect["Id"]), str(inspect["Name"]).lstrip("/"))


async def list_containers(request: web.Request) -> web.Response:
    """The containers androcond moved and where each runs now (the last move of it that landed)."""
    state = request.app[STATE]
    return web.json_response({"containers": [
        {"name": r.container_name, "where": r.device, "since": r.updated_at, "migration_id": r.id,
         "from": r.source, "container_id": r.target_container_id}
        for r in await state.journal.placements()]})


async def create_migration(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "the body must be JSON"}, status=400)
    if not isinstance(body, dict) or not isinstance(body.get("container"), str) \
            or not isinstance(body.get("device"), str):
        return web.json_response({"error": 'expected {"container": NAME_OR_ID, "device": NAME}'}, status=400)
    device = body["device"]
    if device != HOME and device not in state.settings.devices:
        known = ", ".join([HOME, *sorted(state.settings.devices)])
        return web.json_response({"error": f"unknown device {device!r} (known: {known})"}, status=400)
    try:
        where = await _where(state, body["container"])
    except EngineError as exc:
        status = 404 if exc.status == 404 else 502
        return web.json_response({"error": str(exc)}, status=status)
    if where.place == device:
        return web.json_response({"error": f"container {where.name} already runs on {device}"}, status=409)
    keep = bool(body.get("keep_source", False))
    try:
        record = await state.submit(MigrationRequest(where.container_id, where.name, device, origin="api",
                                                     keep_source=keep, source=where.place))
    except AlreadyMigrating as exc:
        return web.json_response({"error": str(exc), "migration": exc.record.as_json()}, status=409)
    except NotAccepting as exc:
        return web.json_response({"error": str(exc)}, status=503)
    return web.json_response(record.as_json(), status=202)


async def list_devices(request: web.Request) -> web.Response:
    state = request.app[STATE]
    statuses = await probe_all(list(state.settings.devices.values()), state.adb)
    return web.json_response({"devices": [s.as_json() for s in statuses]})


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # a bug or an unexpected failure: logged in full, reported as JSON
        log.exception("API request failed", path=request.path, method=request.method)
        return web.json_response({"error": f"internal error: {exc.__class__.__name__}: {exc}"}, status=500)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def build_app(state: ApiState) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware(state.settings), _errors_as_json],
                          client_max_size=MAX_BODY)
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/migrations", list_migrations)
    app.router.add_post("/migrations", create_migration)
    app.router.add_get("/migrations/{id}", get_migration)
    app.router.add_get("/devices", list_devices)
    app.router.add_get("/containers", list_containers)
    app.router.add_get("/metrics", metrics)
    return app


async def start_api(app: web.Application, address: str) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    if address.startswith("unix:"):
        path = Path(address[len("unix:"):])
        # Start-up only: a few metadata syscalls, not worth a thread.
        os.makedirs(path.parent, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left by a previous run
        # Bind under a umask that gives nobody else a moment of access to the socket.
        old = os.umask(0o077)
        try:
            site: web.BaseSite = web.UnixSite(runner, str(path))
            await site.start()
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
    else:
        tcp = Address.parse(address)  # the config checked it
        site = web.TCPSite(runner, tcp.host, tcp.port)
        await site.start()
    log.info("API listening", address=address)
    return runner
