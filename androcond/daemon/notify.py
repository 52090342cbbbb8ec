"""Webhook notifications: every state change of a migration as a signed CloudEvents 1.0 event (events.py),
delivered from a durable outbox.

An event is first written to a durable outbox (its own SQLite file under `state_dir`, one row per webhook it
goes to), then a delivery loop POSTs it. A migration never waits on a receiver: :meth:`Webhooks.publish` only
writes the outbox and wakes the loop. Rows are retried with exponential backoff and full jitter, in order per
migration per webhook, until delivered, refused for good (a 4xx other than 408/429) or older than `max_age`.
What is in the outbox when the daemon stops is delivered after it starts again.

Delivery is at least once: a receiver that answers 2xx after we gave up waiting sees the event again; the
CloudEvents `id` lets it drop the duplicate.

SQLite work runs on one dedicated thread, as in :mod:`androcond.migration.journal`. Secrets never reach a log call or a
repr, and logged webhooks are shown by origin only (a URL's path or query may itself be a credential).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import email.utils
import math
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from ..backoff import Backoff
from ..config import Settings, WebhookSettings
from ..errors import AndrocondError
from ..logging import get_logger
from ..migration.journal import MigrationRecord
from ..sqlite_thread import SqliteThread
from .events import CONTENT_TYPE, EVENT_KINDS, EVENT_TYPE_PREFIX, SIGNATURE_HEADER, build_event, encode_event, sign

log = get_logger(__name__)

T = TypeVar("T")

OUTBOX_FILE = "outbox.sqlite3"
# Statuses worth another try: the receiver is busy, throttling or broken for now.
_RETRY_STATUSES = frozenset({408, 429})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook TEXT NOT NULL,
    migration_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL
);
"""


class NotifyError(AndrocondError):
    """The outbox could not be read or written."""


def _origin(url: str) -> str:
    """What a log line may show of a webhook URL: scheme, host and port (no path, query or user info)."""
    try:
        return str(URL(url).origin())
    except ValueError:
        return "<invalid url>"


@dataclass(frozen=True)
class _Hook:
    url: str
    origin: str
    secret: str | None = field(repr=False)
    kinds: frozenset[str]  # empty: every kind

    def admits(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds


@dataclass
class _Pending:
    seq: int
    webhook: str
    migration_id: str
    event_id: str
    kind: str
    body: bytes = field(repr=False)
    created_at: float
    attempts: int
    next_at: float

    @property
    def chain(self) -> tuple[str, str]:
        return self.webhook, self.migration_id


class Webhooks:
    """The outbox and its delivery loop. Open with :meth:`open`; run :meth:`run` as a task; :meth:`close`."""

    def __init__(self, settings: Settings, *, base_delay: float = 1.0, max_delay: float = 300.0,
                 max_age: float = 86400.0, request_timeout: float = 10.0) -> None:
        self.path = settings.daemon.state_dir / OUTBOX_FILE
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_age = max_age
        self.request_timeout = request_timeout
        self._hooks = _hooks(settings.webhooks)
        self._source = f"androcond://{socket.gethostname()}"
        self._sqlite = SqliteThread(self.path, _SCHEMA, NotifyError, "outbox")
        # Undelivered rows by (webhook, migration), ordered by seq; only the head of a chain may be sent.
        self._chains: dict[tuple[str, str], list[_Pending]] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._closed = False
        self.delivered = 0
        self.dropped = 0
        self.retried = 0

    def __repr__(self) -> str:
        return f"<Webhooks {len(self._hooks)} webhook(s), {self.queue_depth} queued>"

    @classmethod
    async def open(cls, settings: Settings, *, base_delay: float = 1.0, max_delay: float = 300.0,
                   max_age: float = 86400.0, request_timeout: float = 10.0) -> Webhooks:
        """Open the outbox and load what a previous run left undelivered. No webhooks: no file, no thread."""
        hooks = cls(settings, base_delay=base_delay, max_delay=max_delay, max_age=max_age,
                    request_timeout=request_timeout)
        if hooks._hooks:
            await hooks._sqlite.open()
            await hooks._load()
        return hooks

    @property
    def db(self) -> sqlite3.Connection:
        return self._sqlite.db

    async def _run(self, fn: Callable[[], T]) -> T:
        return await self._sqlite.run(fn)

    async def _load(self) -> None:
        def fetch() -> list[_Pending]:
            rows = self.db.execute("SELECT seq, webhook, migration_id, event_id, kind, body, created_at, attempts, "
                                   "next_at FROM outbox ORDER BY seq")
            return [_Pending(*row) for row in rows]

        orphans = []
        for item in await self._run(fetch):
            if item.webhook in self._hooks:
                self._chains.setdefault(item.chain, []).append(item)
            else:
                orphans.append(item)
        for item in orphans:
            # Without its configuration (the secret) the event cannot be sent as it was meant to be.
            await self._delete(item)
            self.dropped += 1
            log.warning("webhook event dropped", reason="webhook no longer configured", webhook=_origin(item.webhook),
                        event_id=item.event_id, type=EVENT_TYPE_PREFIX + item.kind, migration_id=item.migration_id)
        if self.queue_depth:
            log.info("undelivered webhook events from a previous run", queued=self.queue_depth)

    async def close(self) -> None:
        """Stop the delivery loop if it runs, and close the outbox. What is undelivered stays for next time."""
        self._closed = True
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.wait([task])
        await self._sqlite.close()

    # -- publishing ------------------------------------------------------------------------------------------

    async def publish(self, record: MigrationRecord, kind: str) -> None:
        """Queue the event for every webhook whose filter admits `kind`; it is in the outbox on return.

        Raises ValueError for an unknown kind and NotifyError if the outbox cannot be written.
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r} (known: {', '.join(EVENT_KINDS)})")
        targets = [hook.url for hook in self._hooks.values() if hook.admits(kind)]
        if not targets:
            return
        event = build_event(record, kind, source=self._source)
        event_id = event.get_id()
        body = encode_event(event)
        now = time.time()

        def insert() -> list[int]:
            with self.db:
                self.db.execute("BEGIN")
                return [_lastrowid(self.db.execute(
                    "INSERT INTO outbox (webhook, migration_id, event_id, kind, body, created_at, attempts, next_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 0, ?)", (url, record.id, event_id, kind, body, now, now)))
                    for url in targets]

        seqs = await self._run(insert)
        for url, seq in zip(targets, seqs, strict=True):
            item = _Pending(seq, url, record.id, event_id, kind, body, now, 0, now)
            # By seq, not by arrival: seqs follow the order publish() was called in.
            bisect.insort(self._chains.setdefault(item.chain, []), item, key=lambda p: p.seq)
        self._wake.set()
        self._notify_changed()

    # -- delivering ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver the outbox until cancelled. Owns the HTTP session; one task per chain in flight."""
        if self._closed:
            return  # close() came first: nothing may be sent from a closed outbox
        self._run_task = asyncio.current_task()
        if not self._hooks:
            await asyncio.Future()  # nothing will ever be queued; wait for the cancel
        self._in_flight.clear()  # a previous run() was cancelled mid-send: those heads are due again
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as tg:
            while True:
                self._wake.clear()
                now = time.time()
                next_due = math.inf
                for chain, items in self._chains.items():
                    if chain in self._in_flight:
                        continue
                    head = items[0]
                    if head.next_at <= now:
                        self._in_flight.add(chain)
                        tg.create_task(self._deliver(session, head))
                    else:
                        next_due = min(next_due, head.next_at)
                # Sleep until the next retry is due, or at once when publish() or a finished send wakes us.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if next_due == math.inf else next_due - now):
                        await self._wake.wait()

    async def _deliver(self, session: aiohttp.ClientSession, item: _Pending) -> None:
        hook = self._hooks[item.webhook]
        try:
            if time.time() - item.created_at >= self.max_age:
                await self._drop(item, hook, reason="too old", max_age_s=self.max_age)
                return
            outcome, detail, retry_after = await self._post(session, hook, item)
            if outcome == "delivered":
                await self._delete(item)
                self._pop(item)
                self.delivered += 1
                log.debug("webhook event delivered", webhook=hook.origin, event_id=item.event_id,
                          type=EVENT_TYPE_PREFIX + item.kind, migration_id=item.migration_id,
                          attempts=item.attempts + 1)
            elif outcome == "dropped":
                await self._drop(item, hook, reason=detail, attempts=item.attempts + 1)
            else:
                await self._reschedule(item, hook, detail, retry_after)
        except Exception as exc:
            # The outbox itself failed (or a bug): keep the event and try again later rather than lose it or stop
            # delivering to everyone else. Cancellation is not an Exception and goes through.
            log.error("webhook delivery error", webhook=hook.origin, event_id=item.event_id,
                      error=f"{type(exc).__name__}: {exc}")
            item.next_at = time.time() + self._backoff(item.attempts + 1)
        finally:
            self._in_flight.discard(item.chain)
            self._wake.set()
            self._notify_changed()

    async def _post(self, session: aiohttp.ClientSession, hook: _Hook,
                    item: _Pending) -> tuple[str, str, float | None]:
        """One attempt: ("delivered" | "dropped" | "retry", why, the receiver's Retry-After in seconds)."""
        headers = {"Content-Type": CONTENT_TYPE}
        if hook.secret is not None:
            headers[SIGNATURE_HEADER] = sign(item.body, hook.secret)
        try:
            # No redirects: the signed body goes to the configured URL only.
            async with session.post(hook.url, data=item.body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            return "retry", f"no answer within {self.request_timeout:g} s", None
        except (aiohttp.ClientError, OSError) as exc:
            # aiohttp's messages may carry the URL; show its origin only.
            return "retry", f"{type(exc).__name__}: {exc}".replace(hook.url, hook.origin), None
        if 200 <= status < 300:
            return "delivered", f"http {status}", None
        if status in _RETRY_STATUSES or status >= 500:
            return "retry", f"http {status}", retry_after
        return "dropped", f"http {status}", None

    async def _reschedule(self, item: _Pending, hook: _Hook, why: str, retry_after: float | None = None) -> None:
        attempts = item.attempts + 1
        # A receiver's Retry-After (429/503) is honoured up to max_delay; never wait past the event's expiry:
        # it is then dropped on time, with its log line.
        delay = max(self._backoff(attempts), min(retry_after or 0.0, self.max_delay))
        next_at = min(time.time() + delay, item.created_at + self.max_age)

        def update() -> None:
            with self.db:
                self.db.execute("UPDATE outbox SET attempts = ?, next_at = ? WHERE seq = ?",
                                (attempts, next_at, item.seq))

        await self._run(update)
        item.attempts, item.next_at = attempts, next_at
        self.retried += 1
        log.info("webhook delivery failed; will retry", webhook=hook.origin, event_id=item.event_id,
                 type=EVENT_TYPE_PREFIX + item.kind, migration_id=item.migration_id, error=why, attempts=attempts,
                 retry_in_s=round(max(0.0, next_at - time.time()), 3))

    def _backoff(self, attempts: int) -> float:
        """Full jitter: receivers coming back are not hit by every sender at once."""
        return Backoff(self.base_delay, self.max_delay, floor=0.0).delay(attempts)

    async def _drop(self, item: _Pending, hook: _Hook, reason: str, **fields: Any) -> None:
        await self._delete(item)
        self._pop(item)
        self.dropped += 1
        log.warning("webhook event dropped", reason=reason, webhook=hook.origin, event_id=item.event_id,
                    type=EVENT_TYPE_PREFIX + item.kind, migration_id=item.migration_id, **fields)

    async def _delete(self, item: _Pending) -> None:
        def delete() -> None:
            with self.db:
                self.db.execute("DELETE FROM outbox WHERE seq = ?", (item.seq,))

        await self._run(delete)

    def _pop(self, item: _Pending) -> None:
        items = self._chains[item.chain]
        assert items[0] is item, "only the head of a chain is ever sent"
        items.pop(0)
        if not items:
            del self._chains[item.chain]

    # -- observing -------------------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return sum(len(items) for items in self._chains.values())

    def stats(self) -> dict[str, int]:
        """Counters since open (delivered, dropped, retried) and the events now waiting (queue_depth)."""
        return {"delivered": self.delivered, "dropped": self.dropped, "retried": self.retried,
                "queue_depth": self.queue_depth}

    def _notify_changed(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, predicate: Callable[[dict[str, int]], bool]) -> None:
        """Return once `predicate(stats())` holds (checked after every change); bound it with a timeout."""
        while not predicate(self.stats()):
            await self._changed.wait()

    async def drain(self) -> None:
        """Return once the outbox is empty (e.g. to flush at shutdown, within a time budget)."""
        await self.wait_until(lambda s: s["queue_depth"] == 0)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _lastrowid(cursor: sqlite3.Cursor) -> int:
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _hooks(configured: tuple[WebhookSettings, ...]) -> dict[str, _Hook]:
    hooks: dict[str, _Hook] = {}
    for settings in configured:
        origin = _origin(settings.url)
        if settings.url in hooks:
            # Outbox rows are keyed by URL, so a second entry could not be told apart from the first.
            log.warning("webhook configured twice; using the first entry", webhook=origin)
            continue
        unknown = sorted(set(settings.events) - set(EVENT_KINDS))
        if unknown:
            log.warning("webhook filter names unknown event kinds", webhook=origin, unknown=unknown,
                        known=list(EVENT_KINDS))
        hooks[settings.url] = _Hook(settings.url, origin, settings.secret, frozenset(settings.events))
    return hooks
