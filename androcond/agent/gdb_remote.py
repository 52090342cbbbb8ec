"""A client of the GDB remote serial protocol, as much of it as reading a stopped qemu-user guest takes.

An emulated container's qemu-x86_64 runs with its gdb stub on a unix socket (protocol/emulation.py). The
guest's registers live in qemu's CPU state, not in the kernel, so ptrace on qemu cannot give them: the stub is
the way in. Written by hand because no maintained asyncio client of the protocol exists (pygdbmi drives a gdb
binary, which a phone does not have), and the part needed is small: framing, threads, registers, memory,
host I/O, single steps, detach and kill.

qemu-user's stub (verified with qemu 10.0) stops every guest thread when a client connects, takes one connection
per run, and no longer reads the socket once the guest runs again: one stop per run.

Everything the stub sends is bounded (packet size, counts) and every wait has a deadline: a container can put
anything behind that socket, and the agent must not be held or harmed by it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import AgentError

MEMORY_STEP = 0x800  # what qemu 10's `m` takes at most (E22 beyond)
PACKET_LIMIT = 1 << 20  # far above any answer asked for here (qemu's own PacketSize is 4 KiB–128 KiB)
REPLY_TIMEOUT_S = 10.0
_STOP = re.compile(rb"^[TS]([0-9a-fA-F]{2})")


class GdbRemoteError(AgentError):
    """The stub answered with an error, broke the protocol, or did not answer in time."""


@dataclass(frozen=True)
class StopReply:
    signal: int
    thread: int | None  # the thread that stopped, when the stub names it


def checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


def escape(data: bytes) -> bytes:
    """Binary data in a packet: '#', '$', '}' and '*' escaped with '}' and xor 0x20."""
    out = bytearray()
    for byte in data:
        if byte in b"#$}*":
            out += bytes((0x7D, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """The body of a packet: '}' escapes, and run-length encoding ('x*n': x repeated n - 29 more times)."""
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x7D and i + 1 < len(data):
            out.append(data[i + 1] ^ 0x20)
            i += 2
        elif byte == 0x2A and out and i + 1 < len(data):  # '*'
            out += out[-1:] * (data[i + 1] - 29)
            i += 2
        else:
            out.append(byte)
            i += 1
    return bytes(out)


class GdbRemote:
    """One connection to a stub. Not for concurrent use: one request at a time, as the protocol is."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._acks = True
        self.packet_size = 4096

    @classmethod
    async def connect(cls, path: Path) -> GdbRemote:
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=PACKET_LIMIT + 16)
        except (OSError, TimeoutError) as exc:
            raise GdbRemoteError(f"cannot reach the emulator's gdb stub at {path}: {exc!r}") from exc
        return cls(reader, writer)

    async def close(self) -> None:
        self._writer.close()
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                await self._writer.wait_closed()
        except (OSError, TimeoutError):
            pass

    # --- framing ---------------------------------------------------------------------------------------
    async def _send(self, body: bytes) -> None:
        self._writer.write(b"$" + body + b"#" + checksum(body))
        await self._writer.drain()
        if self._acks:
            ack = await self._reader.readexactly(1)
            if ack != b"+":
                raise GdbRemoteError(f"the stub refused a packet ({ack!r}): {body[:40]!r}")

    async def _receive(self) -> bytes:
        while True:
            start = await self._reader.readexactly(1)
            if start == b"$":
                break
            if start not in b"+\x03":  # a late ack, or noise between packets
                raise GdbRemoteError(f"not a packet from the stub: {start!r}")
        try:
            framed = await self._reader.readuntil(b"#")
        except asyncio.LimitOverrunError as exc:
            raise GdbRemoteError("a packet from the stub exceeds the limit") from exc
        body = framed[:-1]
        sent_sum = await self._reader.readexactly(2)
        if sent_sum.lower() != checksum(body):
            raise GdbRemoteError("a packet from the stub has a bad checksum")
        if self._acks:
            self._writer.write(b"+")
        return unescape(body)

    async def request(self, body: bytes | str) -> bytes:
        """Send one packet, return the answer's body. An `Exx` answer raises."""
        data = body.encode() if isinstance(body, str) else body
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                await self._send(data)
                answer = await self._receive()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise GdbRemoteError(f"no answer from the stub to {data[:40]!r}: {exc!r}") from exc
        if len(answer) == 3 and answer[:1] == b"E" and answer[1:].isalnum():
            raise GdbRemoteError(f"the stub answered {answer.decode()} to {data[:40]!r}")
        return answer

    # --- the conversation -------------------------------------------------------------------------------
    async def handshake(self) -> dict[str, str]:
        """qSupported (multiprocess ids: `D;pid` needs them), then no-ack mode when offered (qemu 10 does not).
        The stub's features."""
        answer = await self.request(b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;vContSupported+")
        features: dict[str, str] = {}
        for item in answer.decode(errors="replace").split(";"):
            if "=" in item:
                key, _, value = item.partition("=")
                features[key] = value
            elif item:
                features[item[:-1] if item[-1:] in "+-?" else item] = item[-1:]
        if "PacketSize" in features:
            try:
                self.packet_size = max(256, min(int(features["PacketSize"], 16), PACKET_LIMIT))
            except ValueError as exc:
                raise GdbRemoteError(f"not a packet size: {features['PacketSize'][:40]!r}") from exc
        if features.get("QStartNoAckMode") == "+" and await self.request(b"QStartNoAckMode") == b"OK":
            self._acks = False
        return features

    async def stop_reason(self) -> StopReply:
        return parse_stop(await self.request(b"?"))

    async def threads(self) -> list[int]:
        """Every guest thread's id (qemu-user: the host's tid)."""
        found: list[int] = []
        answer = await self.request(b"qfThreadInfo")
        while answer.startswith(b"m"):
            for item in answer[1:].split(b","):
                found.append(parse_thread(item))
            if len(found) > 65536:
                raise GdbRemoteError("the stub lists more threads than a process can have")
            answer = await self.request(b"qsThreadInfo")
        if answer != b"l":
            raise GdbRemoteError(f"unexpected thread list answer {answer[:40]!r}")
        return found

    async def registers(self, thread: int) -> bytes:
        """The `g` packet's registers of one thread, as bytes in the target description's order."""
        if await self.request(f"Hg{thread:x}") != b"OK":
            raise GdbRemoteError(f"the stub cannot select thread {thread}")
        answer = await self.request(b"g")
        try:
            return bytes.fromhex(answer.decode())
        except ValueError as exc:
            raise GdbRemoteError(f"registers of thread {thread} are not hex") from exc

    async def register(self, number: int, size: int) -> bytes:
        """One register of the thread `registers` selected last (`p` packet)."""
        answer = await self.request(f"p{number:x}")
        try:
            value = bytes.fromhex(answer.decode())
        except ValueError as exc:
            raise GdbRemoteError(f"register {number} is not hex") from exc
        if len(value) != size:
            raise GdbRemoteError(f"register {number} has {len(value)} bytes, not {size}")
        return value

    async def read_memory(self, address: int, length: int) -> bytes:
        out = bytearray()
        step = min(MEMORY_STEP, max(16, (self.packet_size - 8) // 2))
        while len(out) < length:
            count = min(step, length - len(out))
            answer = await self.request(f"m{address + len(out):x},{count:x}")
            try:
                chunk = bytes.fromhex(answer.decode())
            except ValueError as exc:
                raise GdbRemoteError(f"memory at {address + len(out):#x} is not hex") from exc
            if not chunk:
                raise GdbRemoteError(f"the stub returned no memory at {address + len(out):#x}")
            out += chunk
        return bytes(out)

    async def write_memory(self, address: int, data: bytes) -> None:
        step = max(16, (self.packet_size - 32) // 2)
        for at in range(0, len(data), step):
            piece = data[at:at + step]
            if await self.request(f"M{address + at:x},{len(piece):x}:{piece.hex()}") != b"OK":
                raise GdbRemoteError(f"the stub did not write memory at {address + at:#x}")

    async def write_registers(self, thread: int, raw: bytes) -> None:
        """One thread's registers (`G`: as `registers` gave them)."""
        if await self.request(f"Hg{thread:x}") != b"OK":
            raise GdbRemoteError(f"the stub cannot select thread {thread}")
        if await self.request(b"G" + raw.hex().encode()) != b"OK":
            raise GdbRemoteError(f"the stub did not write the registers of thread {thread}")

    async def write_register(self, number: int, value: bytes) -> None:
        """One register of the thread `registers` or `write_registers` selected last (`P` packet)."""
        if await self.request(f"P{number:x}={value.hex()}") != b"OK":
            raise GdbRemoteError(f"the stub did not write register {number}")

    async def step(self, pid: int, thread: int, signal: int | None = None) -> StopReply:
        """One instruction of `thread` (with `signal`, gdb's number, delivered first), and its stop. qemu-user
        lets the other threads run meanwhile."""
        action = "s" if signal is None else f"S{signal:02x}"
        return parse_stop(await self.request(f"vCont;{action}:p{pid:x}.{thread:x}"))

    async def transfer(self, obj: str, annex: str, limit: int = PACKET_LIMIT) -> bytes:
        """A `qXfer:<obj>:read:<annex>` object, read in pieces until its end (at most `limit` bytes)."""
        out = bytearray()
        while True:
            answer = await self.request(f"qXfer:{obj}:read:{annex}:{len(out):x},{self.packet_size - 8:x}")
            if answer[:1] not in (b"m", b"l"):
                raise GdbRemoteError(f"qXfer {obj} {annex}: unexpected answer {answer[:40]!r}")
            out += answer[1:]
            if len(out) > limit:
                raise GdbRemoteError(f"qXfer {obj} {annex} exceeds {limit} bytes")
            if answer[:1] == b"l":
                return bytes(out)

    async def read_file(self, path: str, limit: int = PACKET_LIMIT) -> bytes:
        """A file as the guest sees it, through the stub's host I/O (vFile; qemu-user answers /proc/self/maps
        as it emulates it for the guest)."""
        answer = await self.request(f"vFile:open:{path.encode().hex()},0,0")
        fd = _vfile_result(answer, f"open {path}")
        try:
            out = bytearray()
            while True:
                answer = await self.request(f"vFile:pread:{fd:x},{self.packet_size - 16:x},{len(out):x}")
                count = _vfile_result(answer, f"read {path}")
                data = answer.partition(b";")[2]
                if count == 0:
                    return bytes(out)
                out += data[:count]
                if len(out) > limit:
                    raise GdbRemoteError(f"{path} exceeds {limit} bytes")
        finally:
            await self.request(f"vFile:close:{fd:x}")

    async def readlink(self, path: str) -> str:
        """A symbolic link as the guest sees it (vFile:readlink: qemu-user resolves /proc/self/cwd for the guest)."""
        answer = await self.request(f"vFile:readlink:{path.encode().hex()}")
        count = _vfile_result(answer, f"readlink {path}")
        return answer.partition(b";")[2][:count].decode("utf-8", "surrogateescape")

    async def process(self) -> int:
        """The guest's process id (qemu-user: qemu's own pid), from the current thread's multiprocess id."""
        answer = await self.request(b"qC")
        if not answer.startswith(b"QCp"):
            raise GdbRemoteError(f"the stub names no process: {answer[:40]!r}")
        try:
            return int(answer[3:].partition(b".")[0], 16)
        except ValueError as exc:
            raise GdbRemoteError(f"not a process id: {answer[:40]!r}") from exc

    async def detach(self, pid: int) -> None:
        """Let the guest run on as it was, and end the connection (qemu-user's stub takes no other: the guest
        cannot be stopped through it again in this run). `D;pid`: a bare `D` crashes qemu 10."""
        try:
            if await self.request(f"D;{pid:x}") != b"OK":
                raise GdbRemoteError("the stub refused to detach")
        finally:
            await self.close()

    async def kill(self) -> None:
        """End the guest and qemu with it (it answers nothing: it exits)."""
        data = b"k"
        try:
            self._writer.write(b"$" + data + b"#" + checksum(data))
            await self._writer.drain()
        except OSError as exc:
            raise GdbRemoteError(f"the stub did not take the kill: {exc!r}") from exc
        finally:
            await self.close()


def parse_stop(answer: bytes) -> StopReply:
    match = _STOP.match(answer)
    if match is None:
        raise GdbRemoteError(f"not a stop reply: {answer[:40]!r}")
    thread = None
    for field in answer[3:].split(b";"):
        key, _, value = field.partition(b":")
        if key == b"thread" and value:
            thread = parse_thread(value)
    return StopReply(int(match[1], 16), thread)


def parse_thread(item: bytes) -> int:
    """`p<pid>.<tid>` (multiprocess) or `<tid>`, in hex."""
    text = item.decode(errors="replace")
    if text.startswith("p"):
        text = text.partition(".")[2] or text[1:]
    try:
        return int(text, 16)
    except ValueError as exc:
        raise GdbRemoteError(f"not a thread id: {item[:40]!r}") from exc


def _vfile_result(answer: bytes, what: str) -> int:
    if not answer.startswith(b"F"):
        raise GdbRemoteError(f"vFile {what}: unexpected answer {answer[:40]!r}")
    head = answer[1:].partition(b";")[0]
    value, _, errno = head.partition(b",")
    try:
        result = int(value, 16)
    except ValueError as exc:
        raise GdbRemoteError(f"vFile {what}: not a result {answer[:40]!r}") from exc
    if result < 0:
        raise GdbRemoteError(f"vFile {what} failed (errno {int(errno or b'0', 16)})")
    return result
