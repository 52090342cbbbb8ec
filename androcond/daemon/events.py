"""A migration's state changes as CloudEvents 1.0 events (built and written in structured JSON mode by the
CloudEvents SDK), and the HMAC signature a webhook receiver checks (docs/webhooks.md)."""

from __future__ import annotations

import hashlib
import hmac
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.bindings.http import to_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from ..migration.journal import MigrationRecord
from ..migration.states import MigrationState

EVENT_KINDS = ("requested", "rejected", "checkpointed", "resumed", "restored", "rolled_back", "failed")
EVENT_TYPE_PREFIX = "io.androcond.migration."
CONTENT_TYPE = JSONFormat.CONTENT_TYPE  # application/cloudevents+json: structured mode
SIGNATURE_HEADER = "X-Androcond-Signature"

# Journal state → event kind. The checkpoint has just been taken when streaming starts; post-copy's paging means
# it runs on the device while its memory arrives; other intermediate states (preflight, checkpointing,
# restoring, rolling-back) are not worth a notification.
_KIND_FOR_STATE: dict[MigrationState, str] = {
    MigrationState.REQUESTED: "requested",
    MigrationState.REJECTED: "rejected",
    MigrationState.STREAMING: "checkpointed",
    MigrationState.PAGING: "resumed",
    MigrationState.DONE: "restored",
    MigrationState.ROLLED_BACK: "rolled_back",
    MigrationState.FAILED: "failed",
}


def event_kind_for_state(state: MigrationState) -> str | None:
    """The event kind a migration entering journal `state` announces, or None if it announces none."""
    return _KIND_FOR_STATE.get(state)


def build_event(record: MigrationRecord, kind: str, *, source: str | None = None) -> CloudEvent:
    """A CloudEvents 1.0 event for `record` having reached `kind` (the SDK validates its attributes)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r} (known: {', '.join(EVENT_KINDS)})")
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "type": EVENT_TYPE_PREFIX + kind,
        "source": source or f"androcond://{socket.gethostname()}",
        "id": str(uuid.uuid4()),
        # When the journal recorded the change, not when the event is built (it may wait in the outbox).
        "time": datetime.fromtimestamp(record.updated_at, UTC),
        "subject": record.container_name,
        "datacontenttype": "application/json",
    }
    data = {
        "migration_id": record.id,
        "container_id": record.container_id,
        "container_name": record.container_name,
        "device": record.device,
        "from": record.source,  # where it ran before the move ("host", or a device on the way back)
        "to": record.device,
        "state": record.state,
        "error": record.error or None,
        "target_container_id": record.target_container_id or None,
        "bytes_sent": record.bytes_sent,
        "wire_bytes": record.wire_bytes,
        "timings": dict(record.timings),
        "origin": record.origin,
    }
    return CloudEvent(attributes, data)


def encode_event(event: CloudEvent) -> bytes:
    """The body of the POST: the event in structured JSON mode, as the SDK writes it. It is stored in the
    outbox as is, so every try, and every webhook, gets the same bytes (and so the same signature)."""
    return to_structured_event(event).body


def sign(body: bytes, secret: str) -> str:
    """The `X-Androcond-Signature` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
