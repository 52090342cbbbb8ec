"""A typed client of one Docker engine, over aiodocker.

Only what androcond needs, each call with a timeout. aiodocker's own event channel runs an unowned
background task, so the event stream is read here directly from the HTTP response instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiodocker
import aiohttp

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


class Engine:
    def __init__(self, host: str, call_timeout: aiohttp.ClientTimeout = CALL_TIMEOUT) -> None:
        self.host = host
        self._call_timeout = call_timeout  # for the short calls (inspect, info, stats, ...)
        self._docker = aiodocker.Docker(url=host)

    async def close(self) -> None:
        await self._docker.close()

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
        except aiodocker.DockerError as exc:
            if exc.status == 900:
                raise EngineUnreachable(f"Docker engine at {self.host} is unreachable: {exc.message}") from exc
            raise EngineError(f"Docker engine at {self.host}: {what}: {exc.message}", exc.status) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise EngineTimeout(f"Docker engine at {self.host}: {what}: no answer in time") from exc
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            raise EngineUnreachable(
                f"Docker engine at {self.host}: {what}: {exc.__class__.__name__}: {exc}") from exc
        except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
            raise EngineError(f"Docker engine at {self.host}: {what}: unreadable answer: {exc}") from exc

    async def _call(self, path: str, method: str = "GET", *, params: Mapping[str, Any] | None = None,
                    data: Any = None, limits: aiohttp.ClientTimeout | None = None) -> Any:
        with self._errors(f"{method} {path}"):
            return await self._docker._query_json(path, method, params=dict(params or {}), data=data,
                                                  timeout=limits or self._call_timeout)

    async def _object(self, path: str, method: str = "GET", **kwargs: Any) -> Json:
        """A call whose answer must be a JSON object (an engine may answer `null`, e.g. stats of a container
        that stopped a moment ago)."""
        result = await self._call(path, method, **kwargs)
        if not isinstance(result, dict):
            raise EngineError(f"Docker engine at {self.host}: {method} {path}: expected an object, got "
                              f"{type(result).__name__}")
        return result

    async def version(self) -> Json:
        return await self._object("version")

    async def info(self) -> Json:
        return await self._object("info")

    async def list_containers(self, *, label: str | None = None, all_states: bool = False) -> list[Json]:
        params: dict[str, Any] = {"all": all_states}
        if label is not None:
            params["filters"] = json.dumps({"label": [label]})
        result = await self._call("containers/json", params=params)
        if not isinstance(result, list):
            raise EngineError(f"Docker engine at {self.host}: containers/json: expected a list")
        return [c for c in result if isinstance(c, dict)]

    async def inspect_container(self, ref: str) -> Json:
        result = await self._object(f"containers/{ref}/json")
        if not isinstance(result.get("State"), dict):
            raise EngineError(f"Docker engine at {self.host}: containers/{ref}/json: no State in the answer")
        return result

    async def create_container(self, config: Json, *, name: str | None = None) -> str:
        params = {"name": name} if name else {}
        result = await self._object("containers/create", "POST", params=params, data=config)
        if not isinstance(result.get("Id"), str):
            raise EngineError(f"Docker engine at {self.host}: containers/create: no Id in the answer")
        return str(result["Id"])

    async def start_container(self, ref: str, *, checkpoint: str | None = None) -> None:
        params = {"checkpoint": checkpoint} if checkpoint else {}
        for attempt in range(CHECKPOINT_BLOB_RETRIES + 1):
            try:
                await self._call(f"containers/{ref}/start", "POST", params=params, limits=LONG_CALL_TIMEOUT)
                return
            except EngineError as exc:
                # Docker 20.10: a restore soon after a checkpoint of the same container can find the
                # checkpoint's blob still in containerd's content store (cleaned up ~0.5 s later).
                if checkpoint is None or "already exists" not in str(exc) or attempt == CHECKPOINT_BLOB_RETRIES:
                    raise
                await asyncio.sleep(0.25 * (attempt + 1))

    async def stop_container(self, ref: str, *, timeout_s: int = 10) -> None:
        await self._call(f"containers/{ref}/stop", "POST", params={"t": timeout_s}, limits=LONG_CALL_TIMEOUT)

    async def wait_stopped(self, ref: str) -> None:
        """Return once the engine sees the container not running (its wait endpoint, no polling)."""
        await self._call(f"containers/{ref}/wait", "POST", params={"condition": "not-running"})

    async def remove_container(self, ref: str, *, force: bool = False) -> None:
        await self._call(f"containers/{ref}", "DELETE", params={"force": force, "v": True})

    async def create_checkpoint(self, ref: str, name: str, *, leave_running: bool = False) -> None:
        """CRIU-checkpoint a running container through the engine's (experimental) checkpoint API."""
        await self._call(f"containers/{ref}/checkpoints", "POST",
                         data={"CheckpointID": name, "Exit": not leave_running},
                         limits=LONG_CALL_TIMEOUT)

    async def image_exists(self, ref: str) -> bool:
        try:
            await self._call(f"images/{ref}/json")
        except EngineError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def load_image(self, tar_stream: AsyncIterator[bytes]) -> str:
        """`docker load` from a streamed `docker save` tar; returns the engine's report."""
        with self._errors("image load"):
            async with self._docker._query("images/load", "POST", params={"quiet": True}, data=tar_stream,
                                           headers={"Content-Type": "application/x-tar"},
                                           timeout=TRANSFER_TIMEOUT) as response:
                report = (await response.read()).decode(errors="replace")
        if '"error"' in report:
            raise EngineError(f"Docker engine at {self.host}: image load failed: {report.strip()[:500]}")
        return report

    async def save_image(self, ref: str) -> AsyncIterator[bytes]:
        """`docker save` of one image as a stream of chunks."""
        with self._errors(f"image save {ref}"):
            async with self._docker._query(f"images/{ref}/get", timeout=TRANSFER_TIMEOUT) as response:
                async for chunk in response.content.iter_chunked(256 * 1024):
                    yield chunk

    async def stats(self, ref: str) -> Json:
        # one-shot: no second sample for CPU percentages (that costs a second).
        return await self._object(f"containers/{ref}/stats", params={"stream": False, "one-shot": True})

    async def update_container(self, ref: str, update: Json) -> None:
        """`docker update` (restart policy, resources) of an existing container."""
        await self._call(f"containers/{ref}/update", "POST", data=update)

    async def inspect_network(self, name: str) -> Json:
        return await self._object(f"networks/{name}")

    async def create_network(self, name: str, driver: str) -> str:
        result = await self._object("networks/create", "POST",
                                    data={"Name": name, "Driver": driver, "CheckDuplicate": True})
        return str(result.get("Id", ""))

    async def remove_network(self, name: str) -> None:
        await self._call(f"networks/{name}", "DELETE")

    async def inspect_volume(self, name: str) -> Json:
        return await self._object(f"volumes/{name}")

    async def container_logs(self, ref: str) -> str:
        """stdout+stderr of a container without a TTY, demultiplexed."""
        with self._errors(f"logs of {ref}"):
            async with self._docker._query(f"containers/{ref}/logs", params={"stdout": True, "stderr": True},
                                           timeout=self._call_timeout) as response:
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
                async with self._docker._query("events", params=params, timeout=STREAM_TIMEOUT) as response:
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
