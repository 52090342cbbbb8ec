"""Prometheus metrics of the daemon (prometheus-client), served by the API at /metrics.

Migration outcomes and timings are counted as migrations end; gauges that mirror live state (in flight,
webhook queue, event-stream reconnects) are read at scrape time by a collector, so they can never drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..migration.journal import TERMINAL, MigrationRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120, 300)


class _LiveState(Collector):
    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        live = self._read()
        yield GaugeMetricFamily("androcond_migrations_in_flight", "Migrations between request and their end",
                                value=live.get("in_flight", 0))
        yield CounterMetricFamily("androcond_event_stream_reconnects", "Reconnections to the Docker event stream",
                                  value=live.get("reconnects", 0))
        yield GaugeMetricFamily("androcond_webhook_queue_depth", "Webhook deliveries waiting in the outbox",
                                value=live.get("queue_depth", 0))
        deliveries = CounterMetricFamily("androcond_webhook_deliveries", "Webhook delivery attempts by outcome",
                                         labels=["outcome"])
        for outcome in ("delivered", "dropped", "retried"):
            deliveries.add_metric([outcome], live.get(outcome, 0))
        yield deliveries


class Metrics:
    def __init__(self, live: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.migrations = Counter("androcond_migrations", "Finished migrations by outcome", ["outcome"],
                                  registry=self.registry)
        # The same, by where each move came from and went to ("host" or a device): the way back and moves
        # between devices apart from the way out.
        self.moves = Counter("androcond_moves", "Finished migrations by where from, where to and outcome",
                             ["from_place", "to_place", "outcome"], registry=self.registry)
        self.downtime = Histogram("androcond_migration_downtime_seconds",
                                  "Source frozen until running on the device", buckets=_SECONDS,
                                  registry=self.registry)
        self.last_page = Histogram("androcond_migration_last_page_seconds",
                                   "Post-copy: source frozen until every page arrived on the device",
                                   buckets=_SECONDS, registry=self.registry)
        self.total = Histogram("androcond_migration_total_seconds", "Request until the migration ended",
                               buckets=_SECONDS, registry=self.registry)
        self.bytes = Counter("androcond_bytes_streamed", "Bytes sent to devices, as read at the source",
                             registry=self.registry)
        self.wire_bytes = Counter("androcond_bytes_on_wire", "Bytes sent to devices as the link carried them "
                                  "(compressed where that paid)", registry=self.registry)
        self.registry.register(_LiveState(live))

    def migration_ended(self, record: MigrationRecord) -> None:
        if record.state not in TERMINAL:
            return
        self.migrations.labels(outcome=record.state).inc()
        if record.device:  # a label refused before any move names no target
            self.moves.labels(from_place=record.source, to_place=record.device, outcome=record.state).inc()
        self.bytes.inc(record.bytes_sent)
        self.wire_bytes.inc(record.wire_bytes)
        if "downtime_s" in record.timings:
            self.downtime.observe(record.timings["downtime_s"])
        if "last_page_s" in record.timings:
            self.last_page.observe(record.timings["last_page_s"])
        if "total_s" in record.timings:
            self.total.observe(record.timings["total_s"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
