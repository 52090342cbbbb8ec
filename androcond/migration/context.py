"""What a migration runs with: the daemon's settings, journal and engine, how it reaches a target (a seam),
its source, the hooks that announce its changes, and the owner of the tasks that outlive it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from ..config import DeviceSettings, Settings, TimeoutSettings
from ..engine import Engine
from ..link.adb import AdbClient
from ..link.transport import PhaseTimeouts
from ..source.host import HostSource
from ..target.agent import agent_links
from ..tasks import TaskOwner
from .journal import Journal, MigrationRecord
from .roles import LinkFactory, Source, TargetLink


def phase_timeouts(t: TimeoutSettings) -> PhaseTimeouts:
    return PhaseTimeouts(connect=t.connect, hello=t.connect, begin=t.preflight, file_ack=t.file_ack,
                         image_ack=t.image, commit=t.commit, query=t.query, stream_idle=t.stream_idle)


@dataclass
class Context:
    settings: Settings
    journal: Journal
    engine: Engine
    adb: AdbClient
    # Called after each journaled transition (webhooks, systemd status) and when a migration ends (metrics,
    # or the resolver when it ended unresolved).
    on_change: Callable[[MigrationRecord], Awaitable[None]] | None = None
    on_end: Callable[[MigrationRecord], None] | None = None
    # How a migration reaches its device (a seam): by default its agent, over adb or the network.
    links: LinkFactory | None = None
    # Where a migration's container runs before the move (a seam): by default this daemon's engine.
    sources: Callable[[MigrationRecord], Source] | None = None
    # Settle tasks that outlive a cancelled migration (shutdown): the daemon waits for them within its budget.
    background: TaskOwner = field(default_factory=TaskOwner)

    def connect(self, device: DeviceSettings) -> AbstractAsyncContextManager[TargetLink]:
        """A link to the device's target for as long as the block runs."""
        links = self.links or agent_links(self.adb, phase_timeouts(self.settings.timeouts))
        return links(device)

    def source_for(self, record: MigrationRecord) -> Source:
        """The container's source: the engine this daemon follows."""
        if self.sources is not None:
            return self.sources(record)
        return HostSource(self.engine, self.settings.docker, record, self.settings.timeouts.checkpoint)


def new_record(container_id: str, container_name: str, device: str, origin: str, keep_source: bool) -> MigrationRecord:
    mid = uuid.uuid4().hex
    return MigrationRecord(id=mid, container_id=container_id, container_name=container_name, device=device,
                           origin=origin, keep_source=keep_source, checkpoint_name=f"androcond-{mid[:12]}")
