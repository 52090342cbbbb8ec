"""What a migration runs with: the daemon's settings and journal, how it reaches its roles (a source for the
container, a link to the target: given by whoever runs migrations, so that this package knows the roles only
by their interfaces), the hooks that announce its changes, and the owner of the tasks that outlive it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from ..config import DeviceSettings, Settings, TimeoutSettings
from ..faults import NO_FAULTS, Faults
from ..link.ssh import PhaseTimeouts
from ..tasks import TaskOwner
from .journal import HOME, Journal, MigrationRecord
from .roles import LinkFactory, Source, TargetLink

SourceFactory = Callable[[MigrationRecord], Source]


def home_place(leaving: DeviceSettings | None = None) -> DeviceSettings:
    """The host as a place a container moves to: its own engine, reached without a link (target/host.py); no
    compression (nothing crosses a wire), no emulation. Post-copy back where the device the container leaves
    freezes flat (`freeze = "flat"`: the only way a device serves pages), taken as "auto": the way home is
    never refused for want of post-copy (across ISAs, or an agent that cannot, it moves whole)."""
    flat = leaving is not None and leaving.freeze == "flat" and leaving.lazy != "false"
    return DeviceSettings(name=HOME, lazy="auto" if flat else "false", emulate="false", compress="none",
                          freeze="flat" if flat else "dump")


def phase_timeouts(t: TimeoutSettings) -> PhaseTimeouts:
    return PhaseTimeouts(connect=t.connect, hello=t.connect, begin=t.preflight, file_ack=t.file_ack,
                         image_ack=t.image, commit=t.commit, query=t.query, stream_idle=t.stream_idle)


@dataclass
class Context:
    settings: Settings
    journal: Journal
    links: LinkFactory  # a link to a device's target for as long as the block runs
    sources: SourceFactory  # where a migration's container runs before the move
    # Called after each journaled transition (webhooks, systemd status) and when a migration ends (metrics,
    # or the resolver when it ended unresolved).
    on_change: Callable[[MigrationRecord], Awaitable[None]] | None = None
    on_end: Callable[[MigrationRecord], None] | None = None
    # Settle tasks that outlive a cancelled migration (shutdown): the daemon waits for them within its budget.
    background: TaskOwner = field(default_factory=TaskOwner)
    faults: Faults = NO_FAULTS  # the bed's fault points (faults.py)

    def connect(self, device: DeviceSettings) -> AbstractAsyncContextManager[TargetLink]:
        return self.links(device)

    def place(self, name: str) -> DeviceSettings | None:
        """A migration's target or source by name: a configured device, or the host itself (the way back)."""
        return home_place() if name == HOME else self.settings.devices.get(name)

    def target_of(self, record: MigrationRecord) -> DeviceSettings | None:
        """Where the migration goes, with the settings it goes by: the host takes those of the device left."""
        if record.device == HOME:
            return home_place(self.settings.devices.get(record.source))
        return self.settings.devices.get(record.device)

    def source_for(self, record: MigrationRecord) -> Source:
        return self.sources(record)


def new_record(container_id: str, container_name: str, device: str, origin: str, keep_source: bool, *,
               source: str = HOME) -> MigrationRecord:
    mid = uuid.uuid4().hex
    return MigrationRecord(id=mid, container_id=container_id, container_name=container_name, device=device,
                           origin=origin, keep_source=keep_source, checkpoint_name=f"androcond-{mid[:12]}",
                           source=source)
