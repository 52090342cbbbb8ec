"""The engine adapter maps every failure of the library below into our errors: a small HTTP server on a
unix socket stands in for the Docker engine's API and misbehaves on purpose (the real engine is on the bed;
what is tested here is the mapping)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from androcond.engine import Engine, EngineError, EngineTimeout, EngineUnreachable
from androcond.errors import AndrocondError


async def _null(_request: web.Request) -> web.Response:
    return web.json_response(None)


async def _garbage(_request: web.Request) -> web.Response:
    return web.Response(body=b"{not json", content_type="application/json")


async def _conflict(_request: web.Request) -> web.Response:
    return web.json_response({"message": "is already in progress"}, status=409)


async def _no_state(_request: web.Request) -> web.Response:
    return web.json_response({"Id": "abc"})


async def _no_id(_request: web.Request) -> web.Response:
    return web.json_response({"Warnings": []}, status=201)


async def _cut_stream(request: web.Request) -> web.StreamResponse:
    """`docker save` that dies after the first chunk: the connection drops mid-body."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
    response.content_length = 10 * 1024 * 1024
    await response.prepare(request)
    await response.write(b"x" * 65536)
    assert request.transport is not None
    request.transport.close()
    return response


async def _version(_request: web.Request) -> web.Response:
    return web.json_response({"ApiVersion": "1.41", "Version": "20.10"})


async def _slow(_request: web.Request) -> web.Response:
    await asyncio.sleep(3)  # ten times the client's deadline
    return web.json_response({})


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    app = web.Application()
    app.router.add_get("/{v}/containers/{id}/stats", _null)
    app.router.add_get("/{v}/info", _garbage)
    app.router.add_post("/{v}/containers/{id}/start", _conflict)
    app.router.add_get("/{v}/containers/{id}/json", _no_state)
    app.router.add_post("/{v}/containers/create", _no_id)
    app.router.add_get("/{v}/images/{ref}/get", _cut_stream)
    app.router.add_get("/version", _version)  # aiodocker asks which API version to speak first
    app.router.add_get("/{v}/volumes/{name}", _slow)
    runner = web.AppRunner(app)
    await runner.setup()
    socket = tmp_path / "engine.sock"
    await web.UnixSite(runner, str(socket)).start()
    async with Engine(f"unix://{socket}") as client:
        yield client
    await runner.cleanup()


async def test_a_null_answer_is_an_engine_error(engine: Engine) -> None:
    with pytest.raises(EngineError, match="expected an object, got NoneType"):
        await engine.stats("abc")


async def test_an_unreadable_answer_is_an_engine_error(engine: Engine) -> None:
    with pytest.raises(EngineError, match="unreadable answer") as info:
        await engine.info()
    assert not isinstance(info.value, EngineUnreachable)


async def test_an_engine_refusal_keeps_its_status(engine: Engine) -> None:
    with pytest.raises(EngineError, match="already in progress") as info:
        await engine.start_container("abc")
    assert info.value.status == 409


async def test_answers_missing_what_we_rely_on(engine: Engine) -> None:
    with pytest.raises(EngineError, match="no State"):
        await engine.inspect_container("abc")
    with pytest.raises(EngineError, match="no Id"):
        await engine.create_container({"Image": "x"})


async def test_a_stream_cut_mid_body_is_unreachable_not_a_library_error(engine: Engine) -> None:
    received = 0
    with pytest.raises(EngineUnreachable) as info:
        async for chunk in engine.save_image("img"):
            received += len(chunk)
    assert received > 0
    assert isinstance(info.value, AndrocondError) and isinstance(info.value, ConnectionError)


async def test_no_engine_at_all(tmp_path: Path) -> None:
    async with Engine(f"unix://{tmp_path / 'absent.sock'}") as engine:
        with pytest.raises(EngineUnreachable, match="unreachable"):
            await engine.info()


async def test_a_silent_engine_times_out_as_ours(engine: Engine) -> None:
    async with Engine(engine.host, call_timeout=aiohttp.ClientTimeout(total=0.3)) as impatient:
        with pytest.raises(EngineTimeout) as info:
            await impatient.inspect_volume("v")
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, EngineUnreachable)
