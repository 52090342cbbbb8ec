"""Which migrations run when: at most `max_migrations` at once overall and one per container; requests
beyond the limit wait (they do not fail). Every migration is a task of the daemon's task group, run under a
supervisor: whatever one migration raises stays in that migration."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..aio import complete
from ..link.payload import Progress
from ..logging import get_logger, log_context
from ..migration import Context, Migration, new_record
from ..migration.journal import Journal, MigrationRecord
from ..migration.states import MigrationState
from .requests import AlreadyMigrating, MigrationRequest, NotAccepting

log = get_logger(__name__)


class Scheduler:
    def __init__(self, ctx: Context, journal: Journal, limit: int, spawn: Callable[..., asyncio.Task[None]],
                 on_released: Callable[[MigrationRecord], None] | None = None) -> None:
        self.ctx = ctx
        self.journal = journal
        self._slots = asyncio.Semaphore(limit)
        self._spawn = spawn
        self._on_released = on_released  # a migration left our hands (finished or unresolved)
        self.active: dict[str, MigrationRecord] = {}  # by container id
        self.running_migrations: dict[str, Migration] = {}  # by migration id, for live progress
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False

    @property
    def in_flight(self) -> int:
        return len(self.active)

    def live_progress(self, migration_id: str) -> Progress | None:
        migration = self.running_migrations.get(migration_id)
        return migration.progress if migration is not None else None

    def running(self, migration_id: str) -> bool:
        return any(record.id == migration_id for record in self.active.values())

    async def submit(self, request: MigrationRequest) -> MigrationRecord:
        # Checks and the reservation happen before the first await: drain() and a second submit of the
        # same container see this admission at once.
        container_id = request.container_id
        if self.closed:
            raise NotAccepting("the daemon is shutting down; no new migrations")
        if container_id in self.active:
            raise AlreadyMigrating(self.active[container_id])
        record = new_record(container_id, request.container_name, request.device, request.origin,
                            request.keep_source, source=request.source)
        self.active[container_id] = record
        self._idle.clear()
        spawned = False
        try:
            last = await self.journal.last_for_container(container_id)
            if last is not None and not last.finished:
                raise AlreadyMigrating(last, unresolved=True)  # only the device can say where it runs
            if self.closed:
                raise NotAccepting("the daemon is shutting down; no new migrations")
            await self.journal.create(record)
            task = self._spawn(self._run(record, request.delay_s), name=f"migration-{record.id[:8]}")
            spawned = True
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        finally:
            if not spawned:
                self._release(record)
        if self.ctx.on_change is not None:
            await self.ctx.on_change(record)
        return record

    def _release(self, record: MigrationRecord) -> None:
        if self.active.get(record.container_id) is record:
            del self.active[record.container_id]
        if not self.active:
            self._idle.set()

    async def _run(self, record: MigrationRecord, delay_s: float) -> None:
        with log_context(migration_id=record.id, container=record.container_name):
            try:
                if delay_s > 0:
                    log.info("waiting before migrating", delay_s=delay_s)
                    await asyncio.sleep(delay_s)
                async with self._slots:
                    migration = Migration(self.ctx, record)
                    self.running_migrations[record.id] = migration
                    try:
                        await migration.run()
                    finally:
                        del self.running_migrations[record.id]
            except asyncio.CancelledError:
                if record.state == MigrationState.REQUESTED:  # cancelled while queued: nothing happened
                    record.state, record.error = MigrationState.FAILED, "cancelled before it started (shutdown)"
                    await complete(self.journal.save(record, record.error))  # even if cancelled again meanwhile
                raise
            except Exception as exc:  # Migration.run contains its failures; this is the last line of defence
                log.error("migration task failed", error=str(exc), exc_info=exc)
            finally:
                self._release(record)
                if self._on_released is not None:
                    self._on_released(record)

    async def drain(self) -> None:
        """Stop taking new migrations and wait for the ones in flight (and any still being admitted)."""
        self.closed = True
        await self._idle.wait()

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
