"""An asyncio client of the adb server's host protocol (the server on 127.0.0.1:5037, not adbd).

Every call opens its own connection, as the protocol wants: the server answers one request per connection
(``host:transport:`` switches the connection to the device, after which one service request follows).
Framing, from AOSP's adb OVERVIEW.TXT / SERVICES.TXT and checked against Debian's adb 34:

- a request is 4 lowercase hex digits (length) followed by the payload;
- the reply starts with ``OKAY`` or ``FAIL``; ``FAIL`` is followed by a length-prefixed message;
- ``host-serial:<serial>:forward:...`` answers ``OKAY`` twice (connect, then status), then the local port as a
  length-prefixed string (for ``tcp:0`` and fixed ports alike);
- ``host:track-devices-l`` answers ``OKAY``, then a length-prefixed device list on every change, forever;
- ``shell,v2,raw:`` frames output as packets of 1 byte id + little-endian u32 length + data; the exit packet
  carries the status in one byte. Plain ``shell:`` is a raw stream without the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..aio import run
from ..errors import AndrocondError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5037
DEFAULT_TIMEOUT = 10.0
# A shell command does real work on the device, so it gets longer than a host request.
DEFAULT_SHELL_TIMEOUT = 60.0
# `adb start-server` forks the server and waits until it listens; the first start also makes the adb key.
START_SERVER_TIMEOUT = 30.0

_MAX_REQUEST = 0xFFFF  # four hex digits of length

# shell protocol v2 packet ids (AOSP adb shell_protocol.h)
_SHELL_STDIN = 0
_SHELL_STDOUT = 1
_SHELL_STDERR = 2
_SHELL_EXIT = 3
_SHELL_CLOSE_STDIN = 4
_SHELL_HEADER = struct.Struct("<BI")
# The sync service (`adb push`): 4-byte ids with little-endian u32 lengths; DATA carries at most 64 KiB.
_SYNC_LENGTH = struct.Struct("<I")
_SYNC_DATA_MAX = 64 * 1024


# --- errors -----------------------------------------------------------------------------------------------

class AdbError(AndrocondError):
    """Root of everything this module raises on purpose."""


class AdbServerUnavailable(AdbError):
    """No adb server answers at the address (and it could not be started, if asked to)."""


class AdbTimeout(AdbError):
    """The adb server did not complete a request in time."""


class AdbStreamError(AdbError):
    """The connection to the adb server broke, or carried something that is not the host protocol."""


class AdbFailure(AdbError):
    """The adb server answered FAIL; ``message`` is its text, verbatim."""

    def __init__(self, request: str, message: str) -> None:
        super().__init__(f"adb server refused {request!r}: {message or '(no reason given)'}")
        self.request = request
        self.message = message


class AdbDeviceNotFound(AdbFailure):
    """No device with that serial is known to the adb server."""


class AdbDeviceUnauthorized(AdbFailure):
    """The device has not (yet) accepted this host's adb key."""


class AdbDeviceOffline(AdbFailure):
    """The device is known but offline (or still connecting)."""


class AdbDeviceNoPermissions(AdbFailure):
    """The adb server may not open the device (USB permissions)."""


def _failure(request: str, message: str) -> AdbFailure:
    # The server's wording is stable across versions (adb transport.cpp); match on prefixes.
    kind: type[AdbFailure] = AdbFailure
    if message.startswith(("device unauthorized", "device still authorizing")):
        kind = AdbDeviceUnauthorized
    elif message.startswith(("device offline", "device still connecting")):
        kind = AdbDeviceOffline
    elif message.startswith("insufficient permissions"):
        kind = AdbDeviceNoPermissions
    elif message.startswith(("no such device", "no devices")) or re.match(r"device '.*' not found", message):
        kind = AdbDeviceNotFound
    return kind(request, message)


# --- values ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdbDevice:
    """One line of ``adb devices -l``."""

    serial: str
    state: str  # device, offline, unauthorized, authorizing, connecting, no permissions, recovery, ...
    properties: Mapping[str, str] = field(default_factory=dict, hash=False)
    # For "no permissions", the server's explanation (udev rules, link); empty otherwise.
    state_detail: str = ""

    @property
    def product(self) -> str | None:
        return self.properties.get("product")

    @property
    def model(self) -> str | None:
        return self.properties.get("model")

    @property
    def device(self) -> str | None:
        return self.properties.get("device")

    @property
    def transport_id(self) -> int | None:
        value = self.properties.get("transport_id")
        return int(value) if value is not None and value.isdigit() else None


@dataclass(frozen=True)
class ShellResult:
    stdout: bytes
    stderr: bytes  # always empty with the v1 protocol, which merges it into stdout
    exit_status: int | None  # None with the v1 protocol, which does not carry it

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


# A property is key:value with a plain key; the "no permissions" explanation holds "[http://...]", which
# does not match because of its bracket.
_PROPERTY = re.compile(r"^[a-z_]+:\S*$")


def parse_device_list(text: str) -> list[AdbDevice]:
    """Parse the body of ``host:devices-l`` (or a ``track-devices-l`` update)."""
    devices = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2:
            continue
        serial, rest = words[0], words[1:]
        split = len(rest)
        while split > 1 and _PROPERTY.match(rest[split - 1]):
            split -= 1
        properties = dict(word.split(":", 1) for word in rest[split:])
        state, detail = " ".join(rest[:split]), ""
        if state.startswith("no permissions"):
            state, detail = "no permissions", state.removeprefix("no permissions").strip()
        devices.append(AdbDevice(serial, state, properties, detail))
    return devices


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        self._reader = reader
        self._writer = writer
        self.address = address

    async def send(self, request: str) -> None:
        payload = request.encode()
        if len(payload) > _MAX_REQUEST:
            raise ValueError(f"adb request too long ({len(payload)} bytes, at most {_MAX_REQUEST})")
        await self.send_raw(b"%04x" % len(payload) + payload)

    async def send_raw(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def read_exactly(self, count: int) -> bytes:
        try:
            return await self._reader.readexactly(count)
        except asyncio.IncompleteReadError as exc:
            raise AdbStreamError(f"adb server at {self.address} closed the connection mid-reply "
                                 f"(got {len(exc.partial)} of {count} bytes)") from exc

    async def read_string(self) -> str:
        header = await self.read_exactly(4)
        try:
            length = int(header, 16)
        except ValueError as exc:
            raise AdbStreamError(f"adb server at {self.address} sent a bad length {header!r}") from exc
        return (await self.read_exactly(length)).decode(errors="replace")

    async def read_status(self, request: str) -> None:
        status = await self.read_exactly(4)
        if status == b"OKAY":
            return
        if status == b"FAIL":
            raise _failure(request, await self.read_string())
        raise AdbStreamError(f"adb server at {self.address} answered {request!r} with {status!r}, "
                             "not OKAY or FAIL")

    async def read_to_eof(self) -> bytes:
        return await self._reader.read()

    async def close(self) -> None:
        self._writer.close()
        # The peer may already be gone; the socket is closed either way.
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


# --- the client --------------------------------------------------------------------------------------------

class AdbClient:
    """A client of one adb server. Holds no connection between calls; safe to share between tasks."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, start_server: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, shell_timeout: float | None = DEFAULT_SHELL_TIMEOUT,
                 track_timeout: float | None = None, adb_path: str = "adb") -> None:
        """``timeout`` bounds each request; ``shell_timeout`` a shell command; ``track_timeout`` the wait
        for the next device list on a track stream (None: a quiet stream is normal, wait forever)."""
        self.host = host
        self.port = port
        self.start_server = start_server
        self.timeout = timeout
        self.shell_timeout = shell_timeout
        self.track_timeout = track_timeout
        self.adb_path = adb_path
        self._start_lock = asyncio.Lock()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # --- connections ---

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Connection(reader, writer, self.address)

    def _unavailable(self, exc: OSError) -> AdbServerUnavailable:
        reason = exc.strerror or str(exc) or exc.__class__.__name__
        hint = "" if self.start_server else ", or pass start_server=True"
        return AdbServerUnavailable(f"no adb server at {self.address} ({reason}); start one with "
                                    f"`adb start-server`{hint}")

    async def _open(self) -> _Connection:
        try:
            return await self._connect()
        except ConnectionRefusedError as exc:
            if not self.start_server:
                raise self._unavailable(exc) from exc
        except OSError as exc:
            raise self._unavailable(exc) from exc
        # Serialised so that concurrent calls start the server once; the first one in starts it.
        async with self._start_lock:
            with contextlib.suppress(ConnectionRefusedError):
                return await self._connect()
            await self._run_start_server()
            try:
                return await self._connect()
            except OSError as exc:
                raise self._unavailable(exc) from exc

    async def _run_start_server(self) -> None:
        command = [self.adb_path, "-P", str(self.port), "start-server"]
        try:
            done = await run(command, timeout_s=START_SERVER_TIMEOUT, stderr="keep", stdout=False)
        except OSError as exc:
            raise AdbServerUnavailable(f"no adb server at {self.address}, and `{' '.join(command)}` could not "
                                       f"run: {exc}") from exc
        if done.returncode != 0:
            raise AdbServerUnavailable(f"no adb server at {self.address}, and `{' '.join(command)}` exited "
                                       f"{done.returncode}: {done.errors.decode(errors='replace').strip()}")

    @contextlib.asynccontextmanager
    async def _session(self, what: str, limit: float | None) -> AsyncIterator[_Connection]:
        """A fresh connection for one request, bounded by ``limit`` seconds, with transport errors made
        AdbErrors. (Not an async ``timeout`` parameter: this is where the client's own timeouts apply.)"""
        try:
            async with asyncio.timeout(limit):
                conn = await self._open()
                try:
                    yield conn
                finally:
                    await conn.close()
        except TimeoutError as exc:
            raise AdbTimeout(f"adb server at {self.address} did not complete {what!r} within {limit} s") \
                from exc
        except OSError as exc:
            raise AdbStreamError(f"connection to the adb server at {self.address} broke during {what!r}: "
                                 f"{exc}") from exc

    async def _query(self, request: str) -> str:
        """A host request whose answer is OKAY and one length-prefixed string."""
        async with self._session(request, self.timeout) as conn:
            await conn.send(request)
            await conn.read_status(request)
            return await conn.read_string()

    async def _serial_command(self, serial: str, command: str) -> bytes:
        """A ``host-serial:`` command answered by two statuses (connect, then result) and maybe a payload."""
        request = f"host-serial:{serial}:{command}"
        try:
            async with self._session(request, self.timeout) as conn:
                await conn.send(request)
                await conn.read_status(request)
                await conn.read_status(request)
                return await conn.read_to_eof()
        except AdbFailure as exc:
            if exc.message:
                raise
            # adb 34 answers forward to an unknown serial with an empty FAIL; ask the server why.
            try:
                await self._query(f"host-serial:{serial}:get-state")
            except AdbFailure as reason:
                raise reason from exc
            raise

    # --- host services ---

    async def server_version(self) -> int:
        answer = await self._query("host:version")
        try:
            return int(answer, 16)
        except ValueError as exc:
            raise AdbStreamError(f"adb server at {self.address} sent a bad version {answer!r}") from exc

    async def devices(self) -> list[AdbDevice]:
        return parse_device_list(await self._query("host:devices-l"))

    async def forward(self, serial: str, remote_port: int, local_port: int = 0) -> int:
        """Forward host tcp:local_port (0: any free port) to the device's tcp:remote_port; the local port."""
        reply = await self._serial_command(serial, f"forward:tcp:{local_port};tcp:{remote_port}")
        if not reply:
            if local_port:
                return local_port  # older servers report the port only for tcp:0
            raise AdbStreamError(f"adb server at {self.address} did not say which port it forwarded")
        try:
            return int(reply[4:int(reply[:4], 16) + 4])
        except ValueError as exc:
            raise AdbStreamError(f"adb server at {self.address} sent a bad forward reply {reply!r}") from exc

    async def killforward(self, serial: str, local_port: int) -> None:
        await self._serial_command(serial, f"killforward:tcp:{local_port}")

    async def connect(self, address: str) -> str:
        """``adb connect``: the server's message ("connected to ...", "already connected to ...")."""
        request = f"host:connect:{address}"
        message = await self._query(request)
        # The server reports a failed connect with OKAY and a message, not FAIL.
        if message.startswith(("failed", "cannot", "unable")):
            raise AdbFailure(request, message)
        return message

    async def disconnect(self, address: str = "") -> str:
        """``adb disconnect``; an empty address disconnects every network device."""
        return await self._query(f"host:disconnect:{address}")

    async def kill_server(self) -> None:
        """``adb kill-server``: the server answers OKAY and exits."""
        async with self._session("host:kill", self.timeout) as conn:
            await conn.send("host:kill")
            await conn.read_status("host:kill")

    async def features(self, serial: str) -> set[str]:
        return set((await self._query(f"host-serial:{serial}:features")).split(","))

    # --- device services ---

    async def push(self, serial: str, local: Path, remote: str, mode: int = 0o644) -> None:
        """``adb push`` of one file, through the sync service (SEND, DATA chunks, DONE; OKAY or FAIL)."""
        request = "sync:"
        async with self._session(f"push {remote}", self.shell_timeout) as conn:
            transport = f"host:transport:{serial}"
            await conn.send(transport)
            await conn.read_status(transport)
            await conn.send(request)
            await conn.read_status(request)
            target = f"{remote},{mode}".encode()
            await conn.send_raw(b"SEND" + _SYNC_LENGTH.pack(len(target)) + target)
            mtime = int((await asyncio.to_thread(local.stat)).st_mtime)
            with local.open("rb") as f:
                # One 64 KiB read at a time: a small file (the agent's) is all a push carries here.
                while chunk := await asyncio.to_thread(f.read, _SYNC_DATA_MAX):
                    await conn.send_raw(b"DATA" + _SYNC_LENGTH.pack(len(chunk)) + chunk)
            await conn.send_raw(b"DONE" + _SYNC_LENGTH.pack(mtime))
            status = await conn.read_exactly(4)
            length = _SYNC_LENGTH.unpack(await conn.read_exactly(4))[0]
            if status == b"FAIL":
                message = (await conn.read_exactly(length)).decode(errors="replace")
                raise AdbFailure(f"push {remote}", message)
            if status != b"OKAY":
                raise AdbStreamError(f"adb server at {self.address} answered a push with {status!r}")
            await conn.send_raw(b"QUIT" + _SYNC_LENGTH.pack(0))

    async def shell(self, serial: str, command: str) -> ShellResult:
        """Run ``command`` with the device's shell; stdin is closed. Exit status with shell protocol v2."""
        v2 = "shell_v2" in await self.features(serial)
        service = f"shell,v2,raw:{command}" if v2 else f"shell:{command}"
        async with self._session(service, self.shell_timeout) as conn:
            transport = f"host:transport:{serial}"
            await conn.send(transport)
            await conn.read_status(transport)
            await conn.send(service)
            await conn.read_status(service)
            if not v2:
                return ShellResult(await conn.read_to_eof(), b"", None)
            return await _read_shell_v2(conn)


async def _read_shell_v2(conn: _Connection) -> ShellResult:
    # Without stdin closed, a command that reads it (cat, sh -s) would wait forever.
    await conn.send_raw(_SHELL_HEADER.pack(_SHELL_CLOSE_STDIN, 0))
    stdout, stderr = bytearray(), bytearray()
    while True:
        try:
            header = await conn.read_exactly(_SHELL_HEADER.size)
        except AdbStreamError as exc:
            # adbd closes after the exit packet; a close before it means the command's status is lost.
            raise AdbStreamError(f"the shell stream closed before the exit status: {exc}") from exc
        kind, length = _SHELL_HEADER.unpack(header)
        data = await conn.read_exactly(length)
        if kind == _SHELL_STDOUT:
            stdout += data
        elif kind == _SHELL_STDERR:
            stderr += data
        elif kind == _SHELL_EXIT:
            return ShellResult(bytes(stdout), bytes(stderr), data[0] if data else None)
