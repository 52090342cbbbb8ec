"""The bed's device link shaped like a phone's, for the benchmarks (`--link`):

- `unshaped`: the veth as it is (faster than the compressor);
- `usb2`: 300 Mbit/s token bucket each way (about 38 MB/s, what USB 2 adb gives on a real phone);
- `wifi`: 120 Mbit/s (about 15 MB/s) and a 10 ms round trip, Wi-Fi adb's.

The rate is tc's `tbf` on both ends of the device's veth. The bed's kernel has no netem (no delaying qdisc
at all), so the round trip comes from a delay line: a TCP relay on the host that holds every chunk 5 ms each
way before passing it on, without limiting the rate (chunks are queued with their release time, not sent one
after another). The device's address in the daemon's config is then the relay's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.testbed import TestBed
from tests.testbed.proc import run


@dataclass(frozen=True)
class Link:
    rate: str  # tc's rate, "" for none
    one_way_delay_s: float


LINKS: dict[str, Link] = {
    "unshaped": Link("", 0.0),
    "usb2": Link("300mbit", 0.0),
    "wifi": Link("120mbit", 0.005),
}


@contextlib.contextmanager
def shaped(bed: TestBed, name: str, agent_ports: list[int]) -> Iterator[dict[int, tuple[str, int]]]:
    """Shape the device's veth for the duration and yield, for each agent port, the (host, port) the daemon
    should dial to reach that agent: the device itself, or a delay line in front of it."""
    link = LINKS[name]
    ends = [["tc"], ["ip", "netns", "exec", bed.device.netns, "tc"]]
    devices = [bed.device.host_if, bed.device.device_if]
    try:
        for tc, dev in zip(ends, devices, strict=True):
            if link.rate:
                run([*tc, "qdisc", "add", "dev", dev, "root", "tbf", "rate", link.rate, "burst", "256kb",
                     "latency", "50ms"])
        with contextlib.ExitStack() as lines:
            addresses = {}
            for port in agent_ports:
                if link.one_way_delay_s:
                    line = lines.enter_context(DelayLine(bed.device.device_ip, port, link.one_way_delay_s))
                    addresses[port] = ("127.0.0.1", line.port)
                else:
                    addresses[port] = (bed.device.device_ip, port)
            yield addresses
    finally:
        for tc, dev in zip(ends, devices, strict=True):
            run([*tc, "qdisc", "del", "dev", dev, "root"], check=False)


class DelayLine:
    """A TCP relay on 127.0.0.1 (an ephemeral port) to host:port that delays each direction by delay_s, in a
    thread of its own so that the benchmark's blocking calls do not stall it."""

    def __init__(self, host: str, port: int, delay_s: float) -> None:
        self.host, self.target_port, self.delay_s = host, port, delay_s
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="delay-line", daemon=True)

    def __enter__(self) -> DelayLine:
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("the delay line did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            device_r, device_w = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            client_w.close()
            return
        async with asyncio.TaskGroup() as group:
            group.create_task(self._direction(client_r, device_w))
            group.create_task(self._direction(device_r, client_w))

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Bounded: a reader that runs ahead of the link waits for the queue, as TCP would make it.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=1024)

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                # A delay line's sleep: the chunk is due later, there is nothing to wait for but time.
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await reader.read(256 * 1024):
                await queue.put((time.monotonic() + self.delay_s, chunk))
        except OSError:
            pass
        finally:
            await queue.put((time.monotonic() + self.delay_s, b""))
            with contextlib.suppress(OSError):
                await sender
