"""A pass-through HTTP proxy in front of a real Docker engine's unix socket that rewrites one answer: the
container stats endpoint answers `null`, as engine A did for a container another tool had just frozen.
Everything else (the event stream, waits, checkpoints) streams through unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from aiohttp import web

_STATS = re.compile(r"^(/v[0-9.]+)?/containers/[^/]+/stats$")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class NullStatsProxy:
    def __init__(self, engine_socket: Path, listen: Path) -> None:
        self.engine_socket = engine_socket
        self.listen = listen
        self.stats_answered = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.listen}"

    async def start(self) -> NullStatsProxy:
        self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.engine_socket)),
                                              timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.listen)).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if _STATS.match(request.path):
            self.stats_answered += 1
            return web.json_response(None)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(request.method, f"http://docker{request.path_qs}", headers=headers,
                                         data=await request.read()) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
