"""Webhook notifications against a real aiohttp receiver on 127.0.0.1: format, signature, order, retries,
drops, durability across a restart, and secrets kept out of logs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.v1.http import from_http as from_http_v1

from androcond.config import DaemonSettings, Settings, WebhookSettings
from androcond.daemon.events import event_kind_for_state
from androcond.daemon.notify import OUTBOX_FILE, Webhooks
from androcond.logging import configure_logging
from androcond.migration.journal import MigrationRecord, MigrationState

SECRET = "s3cr3t-never-logged-7f1c"
FAST = {"base_delay": 0.02, "max_delay": 0.1}
DEADLINE = 10.0


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


@dataclass
class Receiver:
    """A webhook receiver. `answer(n)` gives the status for the n-th request (from 0); only 2xx are `accepted`."""

    sock: socket.socket
    answer: Callable[[int], int] = lambda _n: 200
    hits: list[Hit] = field(default_factory=list)
    accepted: list[Hit] = field(default_factory=list)
    hang: asyncio.Event | None = None  # set: the first request waits for it (a receiver that does not answer)
    retry_after: str | None = None  # sent with every 429/503
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set on every request
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook/token-in-path"

    async def handle(self, request: web.Request) -> web.Response:
        hit = Hit(dict(request.headers), await request.read())
        n = len(self.hits)
        self.hits.append(hit)
        self.arrived.set()
        if n == 0 and self.hang is not None:
            await self.hang.wait()
        status = self.answer(n)
        if 200 <= status < 300:
            self.accepted.append(hit)
        headers = {"Retry-After": self.retry_after} if self.retry_after and status in (429, 503) else {}
        return web.Response(status=status, headers=headers)

    async def listen(self) -> None:
        """Start accepting on the socket; until then connections are refused (it is bound, not listening)."""
        app = web.Application()
        app.router.add_post("/hook/token-in-path", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(answer: Callable[[int], int] = lambda _n: 200) -> Receiver:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        receiver = Receiver(sock, answer)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        if receiver.hang is not None:
            receiver.hang.set()
        if receiver.runner is not None:
            await receiver.runner.cleanup()
        receiver.sock.close()


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The daemon's own JSON log lines (redaction included), at debug level; the previous config restored."""
    saved = structlog.get_config()
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    try:
        yield out
    finally:
        structlog.configure(**saved)


def log_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def settings(state_dir: Path, *hooks: WebhookSettings) -> Settings:
    return Settings(daemon=DaemonSettings(state_dir=state_dir), webhooks=hooks)


def record(name: str = "web", **changes: Any) -> MigrationRecord:
    rec = MigrationRecord(id=uuid.uuid4().hex, container_id=uuid.uuid4().hex + uuid.uuid4().hex,
                          container_name=name, device="pixel", origin="label")
    for key, value in changes.items():
        setattr(rec, key, value)
    return rec


@asynccontextmanager
async def running(cfg: Settings, **options: float) -> AsyncIterator[Webhooks]:
    hooks = await Webhooks.open(cfg, **options)
    task = asyncio.create_task(hooks.run())
    try:
        yield hooks
    finally:
        await hooks.close()
        assert task.cancelled()  # close() stops the loop; cancellation is not swallowed


async def until(hooks: Webhooks, predicate: Callable[[dict[str, int]], bool]) -> None:
    async with asyncio.timeout(DEADLINE):
        await hooks.wait_until(predicate)


def kinds_by_migration(hits: list[Hit]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for hit in hits:
        event = hit.event
        seen.setdefault(event["data"]["migration_id"], []).append(event["type"].rsplit(".", 1)[1])
    return seen


def test_event_kind_for_state() -> None:
    expected = {"requested": "requested", "rejected": "rejected", "streaming": "checkpointed", "paging": "resumed",
                "done": "restored", "rolled-back": "rolled_back", "failed": "failed"}
    assert {s: event_kind_for_state(s) for s in tuple(MigrationState) if event_kind_for_state(s)} == expected
    assert event_kind_for_state(MigrationState.PREFLIGHT) is None
    assert event_kind_for_state(MigrationState.ROLLING_BACK) is None


async def test_cloudevents_signature_and_filter(tmp_path: Path, receivers: Callable[..., Receiver],
                                                log_output: io.StringIO) -> None:
    signed, filtered = receivers(), receivers()
    await signed.listen()
    await filtered.listen()
    cfg = settings(tmp_path, WebhookSettings(signed.url, secret=SECRET),
                   WebhookSettings(filtered.url, events=("failed", "rolled_back")))
    rec = record("db", bytes_sent=4096, timings={"checkpoint_s": 0.5}, target_container_id="abc123")
    async with running(cfg, **FAST) as hooks:
        assert SECRET not in repr(hooks) and SECRET not in repr(cfg)
        for state, kind in (("requested", "requested"), ("streaming", "checkpointed"), ("failed", "failed")):
            rec.state = MigrationState(state)
            rec.error = "boom" if state == "failed" else ""
            await hooks.publish(rec, kind)
        await until(hooks, lambda s: s["delivered"] == 4 and s["queue_depth"] == 0)
        assert hooks.stats() == {"delivered": 4, "dropped": 0, "retried": 0, "queue_depth": 0}

    assert [h.event["type"] for h in signed.accepted] == [
        "io.androcond.migration.requested", "io.androcond.migration.checkpointed", "io.androcond.migration.failed"]
    assert [h.event["type"] for h in filtered.accepted] == ["io.androcond.migration.failed"]
    ids = set()
    for hit in signed.accepted:
        expected = "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(hit.headers["X-Androcond-Signature"], expected)
        assert hit.headers["Content-Type"] == "application/cloudevents+json"
        event = hit.event
        ids.add(event["id"])
        assert uuid.UUID(event["id"]).version == 4
        assert event["specversion"] == "1.0"
        assert event["source"] == f"androcond://{socket.gethostname()}"
        assert event["subject"] == "db"
        assert event["datacontenttype"] == "application/json"
        assert event["time"].endswith("Z")
        assert datetime.fromisoformat(event["time"]).tzinfo == UTC
        data = event["data"]
        assert set(data) == {"migration_id", "container_id", "container_name", "device", "from", "to", "state",
                             "error", "target_container_id", "bytes_sent", "wire_bytes", "timings", "origin"}
        assert data["migration_id"] == rec.id and data["container_id"] == rec.container_id
        assert data["device"] == "pixel" and data["origin"] == "label" and data["bytes_sent"] == 4096
        assert data["from"] == "host" and data["to"] == "pixel"
        assert data["timings"] == {"checkpoint_s": 0.5} and data["target_container_id"] == "abc123"
    assert len(ids) == 3
    assert [h.event["data"]["state"] for h in signed.accepted] == ["requested", "streaming", "failed"]
    assert signed.accepted[2].event["data"]["error"] == "boom"
    assert signed.accepted[0].event["data"]["error"] is None
    # The event sent to both webhooks is the same event.
    assert filtered.accepted[0].body == signed.accepted[2].body
    assert "X-Androcond-Signature" not in filtered.accepted[0].headers
    assert SECRET not in log_output.getvalue()
    assert "token-in-path" not in log_output.getvalue()  # webhooks are logged by origin only


async def test_order_per_migration_while_receivers_flap(tmp_path: Path,
                                                        receivers: Callable[..., Receiver]) -> None:
    # Every other request is refused with 503, so retries interleave with new events.
    first, second = receivers(lambda n: 503 if n % 2 else 200), receivers(lambda n: 503 if n % 3 == 0 else 200)
    await first.listen()
    await second.listen()
    cfg = settings(tmp_path, WebhookSettings(first.url, secret=SECRET), WebhookSettings(second.url))
    a, b = record("a"), record("b")
    async with running(cfg, **FAST) as hooks:
        await hooks.publish(a, "requested")
        await hooks.publish(b, "requested")
        await hooks.publish(a, "checkpointed")
        await hooks.publish(b, "rejected")
        await hooks.publish(a, "restored")
        await until(hooks, lambda s: s["delivered"] == 10 and s["queue_depth"] == 0)
        assert hooks.stats()["retried"] > 0
    for receiver in (first, second):
        assert kinds_by_migration(receiver.accepted) == {a.id: ["requested", "checkpointed", "restored"],
                                                         b.id: ["requested", "rejected"]}


async def test_receiver_not_listening_then_up(tmp_path: Path, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers()
    cfg = settings(tmp_path, WebhookSettings(receiver.url, secret=SECRET))
    rec = record()
    async with running(cfg, **FAST) as hooks:
        for kind in ("requested", "checkpointed", "restored"):
            await hooks.publish(rec, kind)
        await until(hooks, lambda s: s["retried"] >= 3)  # connection refused, several times
        assert hooks.stats()["delivered"] == 0
        await receiver.listen()
        await until(hooks, lambda s: s["queue_depth"] == 0)
        assert hooks.stats()["delivered"] == 3 and hooks.stats()["dropped"] == 0
    assert kinds_by_migration(receiver.hits) == {rec.id: ["requested", "checkpointed", "restored"]}
    assert len({h.event["id"] for h in receiver.hits}) == 3


async def test_receiver_503_then_ok_delivers_each_once_in_order(tmp_path: Path,
                                                               receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(lambda n: 503 if n < 4 else 200)
    await receiver.listen()
    cfg = settings(tmp_path, WebhookSettings(receiver.url))
    rec = record()
    async with running(cfg, **FAST) as hooks:
        for kind in ("requested", "checkpointed", "rolled_back"):
            await hooks.publish(rec, kind)
        await until(hooks, lambda s: s["queue_depth"] == 0)
        assert hooks.stats() == {"delivered": 3, "dropped": 0, "retried": 4, "queue_depth": 0}
    assert kinds_by_migration(receiver.accepted) == {rec.id: ["requested", "checkpointed", "rolled_back"]}
    # The 503s all hit the first event: a later event never overtook it.
    assert {h.event["type"] for h in receiver.hits[:5]} == {"io.androcond.migration.requested"}


@pytest.mark.parametrize("status", [400, 401, 404, 410, 302])
async def test_permanent_refusal_is_dropped_not_retried(tmp_path: Path, receivers: Callable[..., Receiver],
                                                        log_output: io.StringIO, status: int) -> None:
    receiver = receivers(lambda _n: status)
    await receiver.listen()
    cfg = settings(tmp_path, WebhookSettings(receiver.url, secret=SECRET))
    rec = record()
    async with running(cfg, **FAST) as hooks:
        await hooks.publish(rec, "requested")
        await hooks.publish(rec, "failed")  # the drop unblocks the next event of the migration
        await until(hooks, lambda s: s["dropped"] == 2)
        assert hooks.stats() == {"delivered": 0, "dropped": 2, "retried": 0, "queue_depth": 0}
    assert len(receiver.hits) == 2
    drops = [e for e in log_lines(log_output) if e["msg"] == "webhook event dropped"]
    assert [(e["level"], e["reason"], e["type"]) for e in drops] == [
        ("warning", f"http {status}", "io.androcond.migration.requested"),
        ("warning", f"http {status}", "io.androcond.migration.failed")]
    assert SECRET not in log_output.getvalue()


@pytest.mark.parametrize("status", [408, 429, 500, 503])
async def test_transient_refusal_is_retried(tmp_path: Path, receivers: Callable[..., Receiver],
                                            log_output: io.StringIO, status: int) -> None:
    receiver = receivers(lambda n: status if n < 2 else 204)
    await receiver.listen()
    cfg = settings(tmp_path, WebhookSettings(receiver.url, secret=SECRET))
    async with running(cfg, **FAST) as hooks:
        await hooks.publish(record(), "requested")
        await until(hooks, lambda s: s["delivered"] == 1)
        assert hooks.stats() == {"delivered": 1, "dropped": 0, "retried": 2, "queue_depth": 0}
    assert len(receiver.hits) == 3
    retries = [e for e in log_lines(log_output) if e["msg"] == "webhook delivery failed; will retry"]
    assert [e["error"] for e in retries] == [f"http {status}"] * 2
    assert SECRET not in log_output.getvalue()


async def test_timeout_is_retried(tmp_path: Path, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers()
    receiver.hang = asyncio.Event()
    await receiver.listen()
    cfg = settings(tmp_path, WebhookSettings(receiver.url))
    async with running(cfg, request_timeout=0.2, **FAST) as hooks:
        await hooks.publish(record(), "requested")
        await until(hooks, lambda s: s["delivered"] == 1)
        assert hooks.stats()["retried"] >= 1
    assert len(receiver.accepted) == 1 and receiver.accepted[0].body == receiver.hits[0].body


async def test_slow_receiver_does_not_block_other_migrations(tmp_path: Path,
                                                             receivers: Callable[..., Receiver]) -> None:
    receiver = receivers()
    receiver.hang = asyncio.Event()  # the first request (migration a) gets no answer until we say so
    await receiver.listen()
    cfg = settings(tmp_path, WebhookSettings(receiver.url))
    a, b = record("a"), record("b")
    async with running(cfg, **FAST) as hooks:
        await hooks.publish(a, "requested")
        async with asyncio.timeout(DEADLINE):
            await receiver.arrived.wait()  # the request that will hang is there
        await hooks.publish(a, "restored")
        await hooks.publish(b, "requested")
        await until(hooks, lambda s: s["delivered"] == 1)
        assert kinds_by_migration(receiver.accepted) == {b.id: ["requested"]}
        receiver.hang.set()
        await until(hooks, lambda s: s["delivered"] == 3)
    assert kinds_by_migration(receiver.accepted)[a.id] == ["requested", "restored"]


async def test_undelivered_events_survive_a_restart(tmp_path: Path, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers()  # bound, not listening: connections are refused
    cfg = settings(tmp_path, WebhookSettings(receiver.url, secret=SECRET))
    a, b = record("a"), record("b")
    async with running(cfg, **FAST) as hooks:
        await hooks.publish(a, "requested")
        await hooks.publish(b, "requested")
        await hooks.publish(a, "failed")
        await until(hooks, lambda s: s["retried"] >= 2)
        assert hooks.stats()["queue_depth"] == 3
    assert (tmp_path / OUTBOX_FILE).exists()

    await receiver.listen()
    async with running(cfg, **FAST) as hooks:
        assert hooks.stats()["queue_depth"] == 3
        await until(hooks, lambda s: s["queue_depth"] == 0)
        assert hooks.stats() == {"delivered": 3, "dropped": 0, "retried": 0, "queue_depth": 0}
    assert kinds_by_migration(receiver.accepted) == {a.id: ["requested", "failed"], b.id: ["requested"]}
    for hit in receiver.accepted:
        expected = "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
        assert hit.headers["X-Androcond-Signature"] == expected

    # Nothing is left for a third start.
    hooks = await Webhooks.open(cfg, **FAST)
    assert hooks.stats()["queue_depth"] == 0
    await hooks.close()


async def test_published_without_a_running_loop_is_kept(tmp_path: Path, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers()
    await receiver.listen()
    cfg = settings(tmp_path, WebhookSettings(receiver.url))
    hooks = await Webhooks.open(cfg, **FAST)
    await hooks.publish(record(), "requested")  # written before publish returns, even with no loop running
    await hooks.close()
    async with running(cfg, **FAST) as hooks:
        await until(hooks, lambda s: s["delivered"] == 1)
    assert len(receiver.accepted) == 1


async def test_events_older_than_max_age_are_dropped(tmp_path: Path, receivers: Callable[..., Receiver],
                                                     log_output: io.StringIO) -> None:
    receiver = receivers(lambda _n: 503)
    await receiver.listen()
    cfg = settings(tmp_path, WebhookSettings(receiver.url, secret=SECRET))
    async with running(cfg, max_age=0.3, **FAST) as hooks:
        await hooks.publish(record(), "requested")
        await until(hooks, lambda s: s["dropped"] == 1)
        stats = hooks.stats()
        assert stats["queue_depth"] == 0 and stats["delivered"] == 0 and stats["retried"] >= 1
    drops = [e for e in log_lines(log_output) if e["msg"] == "webhook event dropped"]
    assert len(drops) == 1
    assert drops[0]["reason"] == "too old" and drops[0]["level"] == "warning"
    assert SECRET not in log_output.getvalue()


async def test_rows_of_a_webhook_no_longer_configured_are_dropped(tmp_path: Path,
                                                                  receivers: Callable[..., Receiver],
                                                                  log_output: io.StringIO) -> None:
    gone = receivers()
    hooks = await Webhooks.open(settings(tmp_path, WebhookSettings(gone.url, secret=SECRET)))
    await hooks.publish(record(), "failed")
    await hooks.close()
    other = receivers()
    hooks = await Webhooks.open(settings(tmp_path, WebhookSettings(other.url)))
    assert hooks.stats() == {"delivered": 0, "dropped": 1, "retried": 0, "queue_depth": 0}
    await hooks.close()
    drops = [e for e in log_lines(log_output) if e["msg"] == "webhook event dropped"]
    assert [e["reason"] for e in drops] == ["webhook no longer configured"]


async def test_no_webhooks_is_a_no_op(tmp_path: Path) -> None:
    hooks = await Webhooks.open(settings(tmp_path))
    task = asyncio.create_task(hooks.run())
    await hooks.publish(record(), "requested")
    assert hooks.stats() == {"delivered": 0, "dropped": 0, "retried": 0, "queue_depth": 0}
    await hooks.drain()
    await hooks.close()
    await asyncio.wait([task], timeout=DEADLINE)  # stopped by close(), whether it had started or not
    assert task.done()
    assert not (tmp_path / OUTBOX_FILE).exists()


async def test_unknown_kind_is_refused(tmp_path: Path, receivers: Callable[..., Receiver]) -> None:
    cfg = settings(tmp_path, WebhookSettings(receivers().url))
    hooks = await Webhooks.open(cfg)
    with pytest.raises(ValueError, match="rolled-back"):
        await hooks.publish(record(), "rolled-back")
    assert hooks.stats()["queue_depth"] == 0
    await hooks.close()


async def test_retry_after_is_honoured(tmp_path: Path, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(lambda n: 429 if n == 0 else 204)
    receiver.retry_after = "1"
    await receiver.listen()
    cfg = settings(tmp_path, WebhookSettings(receiver.url))
    async with running(cfg, base_delay=0.01, max_delay=5.0) as hooks:
        started = time.monotonic()
        await hooks.publish(record(), "requested")
        await until(hooks, lambda s: s["delivered"] == 1)
        # Backoff alone would retry within 10 ms; the receiver asked for a second.
        assert time.monotonic() - started >= 0.9
    assert len(receiver.hits) == 2


async def test_a_received_body_parses_with_the_cloudevents_sdk(tmp_path: Path,
                                                               receivers: Callable[..., Receiver]) -> None:
    """What a receiver gets is a CloudEvent to the SDK too, with every attribute as we meant it; both the SDK's
    current API and its classic one (cloudevents.v1.http.from_http) read it."""
    receiver = receivers()
    await receiver.listen()
    cfg = settings(tmp_path, WebhookSettings(receiver.url, secret=SECRET))
    rec = record("db", state=MigrationState.FAILED, error="stream: agent → gone", bytes_sent=123,
                 timings={"total_s": 2.5})
    async with running(cfg, **FAST) as hooks:
        await hooks.publish(rec, "failed")
        await until(hooks, lambda s: s["delivered"] == 1)
    hit = receiver.accepted[0]
    expected_sig = "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
    assert hit.headers["X-Androcond-Signature"] == expected_sig

    event = from_http_event(HTTPMessage(hit.headers, hit.body))
    assert event.get_specversion() == "1.0"
    assert event.get_type() == "io.androcond.migration.failed"
    assert event.get_source() == f"androcond://{socket.gethostname()}"
    assert event.get_subject() == "db"
    assert event.get_id() == hit.event["id"]
    assert event.get_time() == datetime.fromtimestamp(rec.updated_at, UTC)
    assert event.get_datacontenttype() == "application/json"
    data = event.get_data()
    assert isinstance(data, dict)
    assert data == {"migration_id": rec.id, "container_id": rec.container_id, "container_name": "db",
                    "device": "pixel", "from": "host", "to": "pixel", "state": "failed",
                    "error": "stream: agent → gone",
                    "target_container_id": None, "bytes_sent": 123, "wire_bytes": 0,
                    "timings": {"total_s": 2.5},
                    "origin": "label"}

    classic = from_http_v1(hit.headers, hit.body)
    assert (classic["type"], classic["source"], classic["subject"], classic["id"]) == (
        "io.androcond.migration.failed", f"androcond://{socket.gethostname()}", "db", hit.event["id"])
    assert classic.data == data
