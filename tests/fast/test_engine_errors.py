"""The engine adapter maps every failure of the library below into our errors: a small HTTP server on a
unix socket stands in for the Docker engine's API and misbehaves on purpose (the real engine is on the bed;
what is tested here is the mapping)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from androcond.engine import Engine, EngineError, EngineTimeout, EngineUnreachable
from androcond.errors import AndrocondError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


async def _image(request: web.Request) -> web.Response:
    ref = request.match_info["ref"]  # decoded: `repo/name:tag` arrives as one quoted segment
    if ref == "androcond-test/twoisa:abc":
        return web.json_response({"Id": "sha256:2150"})
    return web.json_response({"message": f"No such image: {ref}"}, status=404)


async def _no_such_container(request: web.Request) -> web.Response:
    return web.json_response({"message": f"No such container: {request.match_info['id']}"}, status=404)


async def _redirect(_request: web.Request) -> web.Response:
    """What moby's router answers for a path that is not clean (`a/../b`)."""
    return web.Response(status=301, headers={"Location": "/v1.41/networks/other"})


async def _logs(request: web.Request) -> web.StreamResponse:
    """Multiplexed stdout/stderr frames, one frame split across writes."""
    assert request.query["stdout"] == "1" and request.query["stderr"] == "1"
    frames = b"\x01\0\0\0\0\0\0\x06hello\n" + b"\x02\0\0\0\0\0\0\x05oops\n"
    response = web.StreamResponse(headers={"Content-Type": "application/vnd.docker.multiplexed-stream"})
    await response.prepare(request)
    for part in (frames[:5], frames[5:17], frames[17:]):
        await response.write(part)
    await response.write_eof()
    return response


async def _events(request: web.Request) -> web.StreamResponse:
    """Events as JSON lines, then the end of the stream; the filters sent are echoed in the first one."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(json.dumps({"Type": "container", "Action": "start",
                                     "filters": request.query.get("filters")}).encode() + b"\n")
    await response.write(b"\n")  # a keep-alive blank line is skipped
    await response.write(json.dumps({"Type": "container", "Action": "die"}).encode() + b"\n")
    await response.write_eof()
    return response


async def _load(request: web.Request) -> web.Response:
    size = len(await request.read())
    return web.json_response({"stream": f"Loaded {size} bytes of {request.content_type} "
                                        f"(quiet={request.query.get('quiet')})\n"})


async def _checkpoint(request: web.Request) -> web.Response:
    """The engine reads a JSON body only if it is labelled JSON."""
    if request.content_type != "application/json":
        return web.json_response({"message": f"unsupported Content-Type {request.content_type}"}, status=400)
    body = await request.json()
    request.app[SEEN].append(f"body {json.dumps(body, sort_keys=True)}")
    return web.Response(status=201)


async def _wait(request: web.Request) -> web.Response:
    if request.content_type != "application/json":  # a bodiless POST is labelled JSON too
        return web.json_response({"message": f"unsupported Content-Type {request.content_type}"}, status=400)
    return web.json_response({"StatusCode": 0})


SEEN = web.AppKey("seen", list[str])


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[SEEN].append(f"{request.method} {request.raw_path}")
    return await handler(request)


def stand_in(seen: list[str]) -> web.Application:
    app = web.Application(middlewares=[_record])
    app[SEEN] = seen
    app.router.add_get("/{v}/containers/{id}/stats", _null)
    app.router.add_get("/{v}/info", _garbage)
    app.router.add_post("/{v}/containers/{id}/start", _conflict)
    app.router.add_get("/{v}/containers/{id}/json", _no_state)
    app.router.add_post("/{v}/containers/create", _no_id)
    app.router.add_get("/{v}/images/{ref}/get", _cut_stream)
    app.router.add_get("/version", _version)  # the client asks which API version to speak first
    app.router.add_get("/{v}/volumes/{name}", _slow)
    app.router.add_get("/{v}/images/{ref}/json", _image)
    app.router.add_post("/{v}/containers/{id}/update", _no_such_container)
    app.router.add_get("/{v}/networks/{name}", _redirect)
    app.router.add_get("/{v}/containers/{id}/logs", _logs)
    app.router.add_get("/{v}/events", _events)
    app.router.add_post("/{v}/images/load", _load)
    app.router.add_post("/{v}/containers/{id}/checkpoints", _checkpoint)
    app.router.add_post("/{v}/containers/{id}/wait", _wait)
    return app


@pytest.fixture
def seen() -> list[str]:
    """`METHOD raw-path` of every request the stand-in engine received, in order."""
    return []


@pytest.fixture
async def engine(tmp_path: Path, seen: list[str]) -> AsyncIterator[Engine]:
    runner = web.AppRunner(stand_in(seen))
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


async def test_a_name_from_a_caller_is_one_quoted_segment(engine: Engine, seen: list[str]) -> None:
    with pytest.raises(EngineError, match="No such container: a/b c") as info:  # the engine's message, carried
        await engine.update_container("a/b c", {})
    assert info.value.status == 404
    assert "POST /v1.41/containers/a%2Fb%20c/update" in seen


async def test_image_refs_with_a_repository_and_a_tag(engine: Engine, seen: list[str]) -> None:
    assert await engine.image_exists("androcond-test/twoisa:abc")
    assert not await engine.image_exists("repo/name:tag")
    assert seen[-2:] == ["GET /v1.41/images/androcond-test%2Ftwoisa%3Aabc/json",
                         "GET /v1.41/images/repo%2Fname%3Atag/json"]


async def test_a_path_traversal_never_reaches_the_engine(engine: Engine, seen: list[str]) -> None:
    """Quoted, `../../etc/passwd` would still be decoded and cleaned by the engine's router into another path:
    such names are not found, and not asked for."""
    for call in (engine.inspect_container("../../etc/passwd"), engine.update_container("..", {}),
                 engine.remove_container("x/./y"), engine.inspect_network("a//b"), engine.inspect_volume("")):
        with pytest.raises(EngineError, match="no such object") as info:
            await call
        assert info.value.status == 404 and not isinstance(info.value, EngineUnreachable)
    assert not await engine.image_exists("library/../etc/passwd")
    with pytest.raises(EngineError, match="no such object"):
        async for _ in engine.save_image("../x"):
            pass
    assert seen == []


async def test_a_container_name_spelled_with_its_slash(engine: Engine, seen: list[str]) -> None:
    with pytest.raises(EngineError, match="expected an object"):
        await engine.stats("/web")
    assert seen[-1].startswith("GET /v1.41/containers/web/stats?")


async def test_the_api_version_is_asked_once_and_prefixes_every_path(engine: Engine, seen: list[str]) -> None:
    await asyncio.gather(engine.image_exists("a"), engine.image_exists("b"), engine.image_exists("c"))
    await engine.image_exists("d")
    assert seen.count("GET /version") == 1 and seen[0] == "GET /version"
    assert all(path.startswith("GET /v1.41/images/") for path in seen[1:]) and len(seen) == 5


async def test_json_bodies_and_bodiless_posts(engine: Engine, seen: list[str]) -> None:
    await engine.create_checkpoint("c", "cp-1")
    await engine.wait_stopped("c")
    assert seen[-3:] == ["POST /v1.41/containers/c/checkpoints", 'body {"CheckpointID": "cp-1", "Exit": true}',
                         "POST /v1.41/containers/c/wait?condition=not-running"]


async def test_a_redirect_is_refused_not_followed(engine: Engine, seen: list[str]) -> None:
    with pytest.raises(EngineError, match=r"redirect to /v1\.41/networks/other") as info:
        await engine.inspect_network("n")
    assert info.value.status == 301
    assert not any("other" in path for path in seen)


async def test_streamed_answers(engine: Engine) -> None:
    assert await engine.container_logs("c") == "hello\noops\n"
    events = [e async for e in engine.events(filters={"type": ["container"]})]
    assert [e["Action"] for e in events] == ["start", "die"]
    assert json.loads(events[0]["filters"]) == {"type": ["container"]}

    async def tar() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"t" * 100_000

    assert await engine.load_image(tar()) == "{\"stream\": \"Loaded 400000 bytes of application/x-tar (quiet=1)\\n\"}"


async def test_no_engine_at_all_for_a_stream_either(tmp_path: Path) -> None:
    async with Engine(f"unix://{tmp_path / 'absent.sock'}") as engine:
        with pytest.raises(EngineUnreachable, match="unreachable") as info:
            async for _ in engine.events():
                pass
    assert info.value.status is None and not isinstance(info.value, EngineTimeout)


async def test_no_api_version_is_no_answer_about_the_object(tmp_path: Path) -> None:
    """A server without `/version` (not a Docker engine) says nothing about whether an image exists."""
    app = web.Application()
    app.router.add_get("/{v}/images/{ref}/json", _image)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(tmp_path / "other.sock")).start()
        async with Engine(f"unix://{tmp_path / 'other.sock'}") as engine:
            with pytest.raises(EngineError, match="GET /version") as info:
                await engine.image_exists("x")
    finally:
        await runner.cleanup()
    assert info.value.status is None


async def test_an_engine_over_tcp(seen: list[str]) -> None:
    runner = web.AppRunner(stand_in(seen))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        async with Engine(f"tcp://{host}:{port}") as engine:
            assert await engine.image_exists("androcond-test/twoisa:abc")
    finally:
        await runner.cleanup()
    assert seen == ["GET /version", "GET /v1.41/images/androcond-test%2Ftwoisa%3Aabc/json"]
