"""A typed client of one Docker engine, directly on aiohttp.

Only what androcond needs, each call with a timeout. Paths are versioned with the engine's own API version
(asked once, on the first call): the experimental checkpoint endpoints are routed only under a version prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from .errors import AndrocondError

CALL_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=5)
# A checkpoint or a restore through the engine takes seconds per hundred MB of memory.
LONG_CALL_TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=5)
# `docker save`/`load` of a big image over a slow link may take long but must keep moving: no total limit,
# only a deadline on silence (no byte read for this long).
TRANSFER_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120)
# The event stream is open-ended; a dead engine shows up as EOF or a connection error.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
CHECKPOINT_BLOB_RETRIES = 8
_API_VERSION = re.compile(r"\d+\.\d+")
_JSON = {"Content-Type": "application/json"}


class EngineError(AndrocondError):
    """The Docker engine answered with an error (or with something that is not the answer we asked for)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EngineUnreachable(EngineError, ConnectionError):
    """The Docker engine could not be reached (socket missing, refused, connection dropped mid-answer)."""


class EngineTimeout(EngineUnreachable, TimeoutError):
    """The Docker engine did not answer in time."""


Json = dict[str, Any]


def restart_policy(inspect: Json) -> Json | None:
    """The restart policy of an inspected container, None when it has none.

    The engine starts a container with one afresh as soon as a checkpoint has stopped it (Docker does so after
    `docker checkpoint create`, for on-failure, always and unless-stopped alike): a second copy, counting from
    the start, while the first is on its way. So whichever side is the source lifts it for the move; the target
    applies it once its restore succeeded, and a rollback puts it back at the source."""
    policy = (inspect.get("HostConfig") or {}).get("RestartPolicy") or {}
    return None if policy.get("Name") in (None, "", "no") else dict(policy)


class Engine:
    def __init__(self, host: str, call_timeout: aiohttp.ClientTimeout = CALL_TIMEOUT) -> None:
        self.host = host
        self._call_timeout = call_timeout  # for the short calls (inspect, info, stats, ...)
        self._base, self._socket = _endpoint(host)
        # Made on the first call, inside the event loop (an Engine may be built before the loop runs).
        self._session: aiohttp.ClientSession | None = None
        self._api_prefix: str | None = None  # "/v1.41": the engine's API version, once asked
        self._negotiating = asyncio.Lock()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Every failure of the library below as one of ours (aiohttp's ClientPayloadError and
        ServerDisconnectedError are not OSErrors; a bad JSON answer is not an EngineError by itself)."""
        try:
            yield
        except EngineError:  # ours already (an EngineUnreachable is an OSError too: not wrapped twice)
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise EngineTimeout(f"Docker engine at {self.host}: {what}: no answer in time") from exc
        except aiohttp.ClientConnectionError as exc:
            raise EngineUnreachable(
                f"Docker engine at {self.host} is unreachable: {what}: {exc.__class__.__name__}: {exc}") from exc
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            raise EngineUnreachable(
                f"Docker engine at {self.host}: {what}: {exc.__class__.__name__}: {exc}") from exc
        except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
            raise EngineError(f"Docker engine at {self.host}: {what}: unreadable answer: {exc}") from exc

    def _path(self, *segments: str) -> str:
        """The request path of these segments, each quoted whole (`/` included): the one place where names
        from callers (container and image refs, network and volume names) become part of an engine URL.

        Moby's router (gorilla/mux, without UseEncodedPath) matches routes on the decoded path, so a quoted
        `/` still reaches `/images/{name:.*}/json` as `repo/name:tag`: image refs are quoted like the rest.
        The same router also cleans the decoded path and redirects to the cleaned one, so quoting alone
        does not keep `../x` in its place: a segment with an empty, `.` or `..` part is refused here, as not
        found, without asking (no container, network or volume name, nor an image ref, has such a part)."""
        for segment in segments:
            if any(part in ("", ".", "..") for part in segment.split("/")):
                raise EngineError(f"Docker engine at {self.host}: no such object: {segment!r} is not a name an "
                                  "engine object can have", 404)
        return "".join("/" + quote(segment, safe="") for segment in segments)

    def _container(self, ref: str, *rest: str) -> str:
        # `/name` is the engine's own spelling of a container's name (inspect's Name).
        return self._path("containers", ref.removeprefix("/"), *rest)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.UnixConnector(path=self._socket) if self._socket is not None \
                else aiohttp.TCPConnector()
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _prefix(self) -> str:
        """`/v<ApiVersion>` of the engine, asked once (unversioned `/version`) and kept."""
        if self._api_prefix is not None:
            return self._api_prefix
        async with self._negotiating:  # concurrent first calls ask once
            if self._api_prefix is None:
                try:
                    with self._errors("GET /version"):
                        async with self._send("GET", "/version", limits=self._call_timeout) as response:
                            answer = json.loads(await response.read())
                except EngineUnreachable:
                    raise
                except EngineError as exc:  # a 404 here is not about the object of the call that asked
                    raise EngineError(str(exc)) from exc
                version = answer.get("ApiVersion") if isinstance(answer, dict) else None
                if not isinstance(version, str) or not _API_VERSION.fullmatch(version):
                    raise EngineError(f"Docker engine at {self.host}: GET /version: no API version in the answer")
                self._api_prefix = f"/v{version}"
            return self._api_prefix

    @contextlib.asynccontextmanager
    async def _send(self, method: str, path: str, *, limits: aiohttp.ClientTimeout,
                    params: Mapping[str, Any] | None = None, data: Any = None,
                    headers: Mapping[str, str] | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; an answer other than success raises EngineError with the engine's message and status.
        Redirects are not followed: the engine's API has none, and its router's would lead to another object."""
        url = URL(self._base + path, encoded=True)  # the path is quoted already (`_path`)
        async with self._client().request(method, url, params=_query(params), data=data,
                                          headers=headers, timeout=limits, allow_redirects=False) as response:
            if response.status >= 300 and response.status != 304:  # 304: already started/stopped
                raise EngineError(f"Docker engine at {self.host}: {method} {path}: {await _refusal(response)}",
                                  response.status)
            yield response

    @contextlib.asynccontextmanager
    async def _request(self, method: str, path: str, *, limits: aiohttp.ClientTimeout,
                       params: Mapping[str, Any] | None = None, data: Any = None,
                       headers: Mapping[str, str] | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """`_send` to the versioned path."""
        async with self._send(method, await self._prefix() + path, limits=limits, params=params,
                              data=data, headers=headers) as response:
            yield response

    async def _call(self, path: str, method: str = "GET", *, params: Mapping[str, Any] | None = None,
                    data: Any = None, limits: aiohttp.ClientTimeout | None = None) -> Any:
        """A call answered by JSON (or by nothing: None); `data` is sent as JSON."""
        body = None if data is None else json.dumps(data).encode()
        with self._errors(f"{method} {path}"):
            # Labelled JSON even without a body: aiohttp would label a bodiless POST application/octet-stream,
            # which the engine refuses where it may read a JSON body.
            async with self._request(method, path, params=params, data=body, headers=_JSON,
                                     limits=limits or self._call_timeout) as response:
                answer = await response.read()
            return json.loads(answer) if answer.strip() else None

    async def _object(self, path: str, method: str = "GET", **kwargs: Any) -> Json:
        """A call whose answer must be a JSON object (an engine may answer `null`, e.g. stats of a container
        that stopped a moment ago)."""
        result = await self._call(path, method, **kwargs)
        if not isinstance(result, dict):
            raise EngineError(f"Docker engine at {self.host}: {method} {path}: expected an object, got "
                              f"{type(result).__name__}")
        return result

    async def version(self) -> Json:
        return await self._object(self._path("version"))

    async def info(self) -> Json:
        return await self._object(self._path("info"))

    async def list_containers(self, *, label: str | None = None, all_states: bool = False,
                              volume: str | None = None) -> list[Json]:
        params: dict[str, Any] = {"all": all_states}
        filters = {**({"label": [label]} if label is not None else {}),
                   **({"volume": [volume]} if volume is not None else {})}
        if filters:
            params["filters"] = json.dumps(filters)
        result = await self._call(self._path("containers", "json"), params=params)
        if not isinstance(result, list):
            raise EngineError(f"Docker engine at {self.host}: GET /containers/json: expected a list")
        return [c for c in result if isinstance(c, dict)]

    async def inspect_container(self, ref: str) -> Json:
        path = self._container(ref, "json")
        result = await self._object(path)
        if not isinstance(result.get("State"), dict):
            raise EngineError(f"Docker engine at {self.host}: GET {path}: no State in the answer")
        return result

    async def create_container(self, config: Json, *, name: str | None = None) -> str:
        params = {"name": name} if name else {}
        result = await self._object(self._path("containers", "create"), "POST", params=params, data=config)
        if not isinstance(result.get("Id"), str):
            raise EngineError(f"Docker engine at {self.host}: POST /containers/create: no Id in the answer")
        return str(result["Id"])

    async def start_container(self, ref: str, *, checkpoint: str | None = None) -> None:
        params = {"checkpoint": checkpoint} if checkpoint else {}
        path = self._container(ref, "start")
        for attempt in range(CHECKPOINT_BLOB_RETRIES + 1):
            try:
                await self._call(path, "POST", params=params, limits=LONG_CALL_TIMEOUT)
                return
            except EngineError as exc:
                # Docker 20.10: a restore soon after a checkpoint of the same container can find the
                # checkpoint's blob still in containerd's content store (cleaned up ~0.5 s later).
                if checkpoint is None or "already exists" not in str(exc) or attempt == CHECKPOINT_BLOB_RETRIES:
                    raise
                await asyncio.sleep(0.25 * (attempt + 1))

    async def pause(self, ref: str) -> None:
        """Freeze every task of the container (its cgroup's freezer)."""
        await self._call(self._container(ref, "pause"), "POST")

    async def unpause(self, ref: str) -> None:
        await self._call(self._container(ref, "unpause"), "POST")

    async def wait_stopped(self, ref: str) -> None:
        """Return once the engine sees the container not running (its wait endpoint, no polling)."""
        await self._call(self._container(ref, "wait"), "POST", params={"condition": "not-running"})

    async def remove_container(self, ref: str, *, force: bool = False) -> None:
        await self._call(self._container(ref), "DELETE", params={"force": force, "v": True})

    async def create_checkpoint(self, ref: str, name: str, *, leave_running: bool = False) -> None:
        """CRIU-checkpoint a running container through the engine's (experimental) checkpoint API."""
        await self._call(self._container(ref, "checkpoints"), "POST",
                         data={"CheckpointID": name, "Exit": not leave_running},
                         limits=LONG_CALL_TIMEOUT)

    async def inspect_image(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(self._path("images", ref, "json"))
        return result

    async def image_exists(self, ref: str) -> bool:
        try:
            await self._call(self._path("images", ref, "json"))
        except EngineError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def load_image(self, tar_stream: AsyncIterator[bytes]) -> str:
        """`docker load` from a streamed `docker save` tar; returns the engine's report."""
        with self._errors("image load"):
            async with self._request("POST", self._path("images", "load"), params={"quiet": True},
                                     data=tar_stream, headers={"Content-Type": "application/x-tar"},
                                     limits=TRANSFER_TIMEOUT) as response:
                report = (await response.read()).decode(errors="replace")
        if '"error"' in report:
            raise EngineError(f"Docker engine at {self.host}: image load failed: {report.strip()[:500]}")
        return report

    async def save_image(self, ref: str) -> AsyncIterator[bytes]:
        """`docker save` of one image as a stream of chunks."""
        with self._errors(f"image save {ref}"):
            async with self._request("GET", self._path("images", ref, "get"), limits=TRANSFER_TIMEOUT) as response:
                async for chunk in response.content.iter_chunked(256 * 1024):
                    yield chunk

    async def stats(self, ref: str) -> Json:
        # one-shot: no second sample for CPU percentages (that costs a second).
        return await self._object(self._container(ref, "stats"), params={"stream": False, "one-shot": True})

    async def update_container(self, ref: str, update: Json) -> None:
        """`docker update` (restart policy, resources) of an existing container."""
        await self._call(self._container(ref, "update"), "POST", data=update)

    async def lift_restart_policy(self, ref: str) -> None:
        """Leave the container without a restart policy for a move (see `restart_policy`)."""
        await self.update_container(ref, {"RestartPolicy": {"Name": "no"}})

    async def inspect_network(self, name: str) -> Json:
        return await self._object(self._path("networks", name))

    async def create_network(self, name: str, driver: str) -> str:
        result = await self._object(self._path("networks", "create"), "POST",
                                    data={"Name": name, "Driver": driver, "CheckDuplicate": True})
        return str(result.get("Id", ""))

    async def inspect_volume(self, name: str) -> Json:
        return await self._object(self._path("volumes", name))

    async def container_logs(self, ref: str) -> str:
        """stdout+stderr of a container without a TTY, demultiplexed."""
        with self._errors(f"logs of {ref}"):
            async with self._request("GET", self._container(ref, "logs"), params={"stdout": True, "stderr": True},
                                     limits=self._call_timeout) as response:
                raw = await response.read()
        return _demux(raw).decode(errors="replace")

    async def events(self, *, since: str | None = None,
                     filters: Mapping[str, list[str]] | None = None) -> AsyncIterator[Json]:
        """Yield engine events as they happen. Ends (or raises EngineUnreachable) when the stream breaks."""
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if filters:
            params["filters"] = json.dumps(dict(filters))
        try:
            with self._errors("event stream"):
                async with self._request("GET", self._path("events"), params=params,
                                         limits=STREAM_TIMEOUT) as response:
                    while line := await response.content.readline():
                        if line.strip():
                            yield json.loads(line)
        except EngineUnreachable:
            raise
        except EngineError as exc:
            if exc.status is not None:  # the engine refused the stream itself: as unreachable, retried
                raise EngineUnreachable(str(exc), exc.status) from exc
            raise


def _demux(raw: bytes) -> bytes:
    """Strip Docker's 8-byte stream headers (stream type, 3 zero bytes, big-endian length)."""
    out = bytearray()
    pos = 0
    while pos + 8 <= len(raw) and raw[pos] in (0, 1, 2) and raw[pos + 1:pos + 4] == b"\0\0\0":
        size = int.from_bytes(raw[pos + 4:pos + 8], "big")
        out += raw[pos + 8:pos + 8 + size]
        pos += 8 + size
    return bytes(out) if pos else raw


def _endpoint(host: str) -> tuple[str, str | None]:
    """The base URL of requests to `host`, and the unix socket to connect to (None: TCP)."""
    if host.startswith("unix://"):
        return "http://docker", host[len("unix://"):]  # the host name is a placeholder: the socket decides
    if host.startswith("tcp://"):
        return "http://" + host[len("tcp://"):].rstrip("/"), None
    if host.startswith(("http://", "https://")):
        return host.rstrip("/"), None
    raise ValueError(f"unsupported Docker host {host!r}: expected unix://, tcp://, http:// or https://")


def _query(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Query parameters as the engine reads them: booleans as 1/0, strings as they are, the rest as JSON."""
    if not params:
        return None
    return {key: ("1" if value else "0") if isinstance(value, bool) else value if isinstance(value, str)
            else json.dumps(value) for key, value in params.items()}


async def _refusal(response: aiohttp.ClientResponse) -> str:
    """What an error answer says: the engine's `{"message": ...}`, else the body's text, else the status line."""
    if 300 <= response.status < 400:
        return f"{response.status} redirect to {response.headers.get('Location', '?')} (not followed)"
    text = (await response.read()).decode(errors="replace").strip()
    with contextlib.suppress(ValueError):
        answer = json.loads(text)
        if isinstance(answer, dict) and isinstance(answer.get("message"), str):
            return str(answer["message"])
    return text[:500] or f"{response.status} {response.reason or ''}".strip()
