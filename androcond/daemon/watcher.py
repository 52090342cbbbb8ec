"""Follow the Docker event stream and report the containers labelled for migration.

At connect it lists the labelled containers already running, then follows ``start`` events. After a broken
stream or an engine restart it reconnects with backoff and resumes with ``since`` at the last event it
handled, so no event is lost; replayed events it already handled are skipped.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ..backoff import Backoff
from ..engine import Engine, EngineError, Json
from ..logging import get_logger
from .labels import MIGRATE_LABEL, LabelError, MigrationLabels, parse_labels

log = get_logger(__name__)
# Reconnecting to the engine: half to full jitter, so many daemons do not hammer a restarted engine in step.
RECONNECT = Backoff(initial_s=0.5, maximum_s=30.0)

Origin = Literal["start-event", "running-at-startup"]


@dataclass(frozen=True)
class ContainerSeen:
    container_id: str
    name: str
    origin: Origin
    labels: MigrationLabels | None = None
    rejection: str | None = None


def engine_time_ns(rfc3339: str) -> int:
    """Nanoseconds since the epoch from the engine's RFC 3339 time (which has 9 fractional digits)."""
    text = rfc3339.replace("Z", "+00:00")
    main, _, rest = text.partition(".")
    frac = ""
    tz = ""
    if rest:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        frac, tz = rest[:digits], rest[digits:]
    else:
        main, tz = main[:19], main[19:]
    stamp = datetime.fromisoformat(main + (tz or "+00:00")).astimezone(UTC)
    return int(stamp.timestamp()) * 1_000_000_000 + int((frac or "0")[:9].ljust(9, "0"))


REPLAY_MARGIN_NS = 2_000_000_000
HANDLED_KEPT = 4096


def since_param(time_ns: int) -> str:
    return f"{time_ns // 1_000_000_000}.{time_ns % 1_000_000_000:09d}"


class Watcher:
    def __init__(self, host: str, devices: Collection[str],
                 on_seen: Callable[[ContainerSeen], Awaitable[None]],
                 on_ready: Callable[[], None] | None = None,
                 backoff: Backoff = RECONNECT) -> None:
        self._host = host
        self._devices = devices
        self._on_seen = on_seen
        self._on_ready = on_ready
        self._backoff = backoff
        self._last_ns: int | None = None
        # Start events already handled, by (container, timeNano): a reconnect replays from a little before the
        # last one, and concurrent starts may arrive slightly out of timestamp order.
        self._handled: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.reconnects = 0
        self.following = False

    async def run(self) -> None:
        """Follow the engine until cancelled; never returns on its own."""
        attempt = 0  # failures since the stream last followed
        first = True
        while True:
            try:
                async with Engine(self._host) as engine:
                    await self._follow(engine)
                reason = "event stream ended"
            except EngineError as exc:  # EngineUnreachable included
                reason = str(exc)
            except Exception as exc:  # an answer we did not expect (a missing key, a bad timestamp): a bug of
                # ours or a new engine — said loudly, then retried like a broken stream, never fatal
                reason = f"{exc.__class__.__name__}: {exc}"
                log.error("unexpected error while following the engine", error=reason, exc_info=exc)
            if self.following:  # it followed for a while: the backoff starts over
                attempt = 0
            self.following = False
            attempt += 1
            delay = self._backoff.delay(attempt)
            if not first:
                self.reconnects += 1
            log.warning("docker engine unreachable, retrying", reason=reason, retry_in_s=round(delay, 2),
                        docker_host=self._host)
            first = False
            await asyncio.sleep(delay)

    async def _follow(self, engine: Engine) -> None:
        info = await engine.info()
        version = await engine.version()
        if self._last_ns is None:
            # First connection: scan what already runs, then replay from just before the scan.
            start_ns = engine_time_ns(str(info["SystemTime"]))
            scanned = await self._scan_running(engine)
            self._last_ns = start_ns
            skip_before_scan = scanned
            since_ns = start_ns
        else:
            skip_before_scan = set()
            # A little before the last event seen: an event stamped earlier may not have reached us before the
            # stream broke. What was handled already is recognised by its key.
            since_ns = max(self._last_ns - REPLAY_MARGIN_NS, 0)
        scan_ns = self._last_ns
        events = engine.events(since=since_param(since_ns),
                               filters={"type": ["container"], "event": ["start"], "label": [MIGRATE_LABEL]})
        log.info("following docker events", docker_host=self._host, engine_version=version.get("Version"),
                 api_version=version.get("ApiVersion"))
        self.following = True
        if self._on_ready is not None:
            self._on_ready()
        async for event in events:
            await self._handle_event(event, scan_ns, skip_before_scan)

    async def _scan_running(self, engine: Engine) -> set[str]:
        seen: set[str] = set()
        for summary in await engine.list_containers(label=MIGRATE_LABEL):
            cid = str(summary["Id"])
            names = summary.get("Names") or [cid[:12]]
            await self._report(cid, str(names[0]).lstrip("/"), summary.get("Labels") or {}, "running-at-startup")
            seen.add(cid)
        return seen

    async def _handle_event(self, event: Json, scan_ns: int, scanned: set[str]) -> None:
        actor = event.get("Actor") or {}
        cid = str(actor.get("ID") or event.get("id") or "")
        time_ns = int(event.get("timeNano") or int(event.get("time", 0)) * 1_000_000_000)
        if not cid:
            return
        if cid in scanned and time_ns <= scan_ns:
            return  # the start that the startup scan already reported
        assert self._last_ns is not None
        key = (cid, time_ns)
        if key in self._handled:
            return  # replayed after a reconnect
        self._handled[key] = None
        if len(self._handled) > HANDLED_KEPT:
            self._handled.popitem(last=False)
        self._last_ns = max(self._last_ns, time_ns)
        attributes = dict(actor.get("Attributes") or {})
        name = attributes.pop("name", cid[:12])
        await self._report(cid, name, attributes, "start-event")

    async def _report(self, cid: str, name: str, labels: dict[str, str], origin: Origin) -> None:
        try:
            parsed = parse_labels(labels, self._devices)
        except LabelError as exc:
            await self._on_seen(ContainerSeen(cid, name, origin, rejection=str(exc)))
            return
        if parsed is not None:
            await self._on_seen(ContainerSeen(cid, name, origin, labels=parsed))
