"""What the daemon's inputs hand to the scheduler: a request to migrate one container, and the ways the
scheduler can refuse one. The watcher (labels) and the HTTP API (`androcond migrate`) are two inputs side by
side; neither knows the scheduler, only :data:`Submit`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import AndrocondError

if TYPE_CHECKING:
    from ..migration.journal import MigrationRecord

Origin = Literal["label", "api"]


@dataclass(frozen=True)
class MigrationRequest:
    container_id: str
    container_name: str
    device: str
    origin: Origin
    keep_source: bool = False
    delay_s: float = 0.0
    source: str = "host"  # where it runs now: the host's engine, or a device (the way back)


class RequestRefused(AndrocondError):
    """The scheduler did not take the request; nothing happened to the container."""


class AlreadyMigrating(RequestRefused):
    def __init__(self, record: MigrationRecord, *, unresolved: bool = False) -> None:
        what = (f"in an unfinished migration ({record.id}, {record.state}) that the resolver settles first: "
                "waiting for its device to say whether it runs there") if unresolved else \
            f"being migrated ({record.id})"
        super().__init__(f"container {record.container_name} is already {what}")
        self.record = record


class NotAccepting(RequestRefused):
    """The daemon is shutting down."""


Submit = Callable[[MigrationRequest], Awaitable["MigrationRecord"]]
