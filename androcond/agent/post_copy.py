"""Post-copy on the device: the container is restored while its memory is still at the source. `criu
lazy-pages` (under its keeper, lazy_pages.py) fetches each page on first touch through the session's channel;
the client hears "paging" once the container runs and "running" (or "failed") once every page has arrived.

A part of the agent's session (session.py), kept here: its methods run with the session as `self`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from ..logging import get_logger
from ..protocol import compression
from ..protocol import protocol_pb2 as pb
from ..protocol.codes import OutcomeState
from ..protocol.wire import ChannelClosed
from .device import DeviceEngine
from .errors import ProtocolViolation, RestoreError
from .incoming import IncomingMigration
from .lazy_pages import PageKeeper
from .outcomes import OutcomeRecord, OutcomeStore

log = get_logger(__name__)


class SessionPort(Protocol):
    """What post-copy uses of its session."""

    device: DeviceEngine
    outcomes: OutcomeStore
    migration: IncomingMigration | None
    _paging: set[asyncio.Task[None]]

    async def send(self, frame: pb.Frame) -> None: ...

    async def _query(self, migration_id: str) -> None: ...

    async def _discard(self, migration: IncomingMigration, state: OutcomeState, error: str) -> None: ...

    async def _end_unfinished(self, state: OutcomeState, reason: str) -> bool: ...

    async def _running(self, migration: IncomingMigration, record: OutcomeRecord,
                       restore_seconds: float) -> None: ...

    async def _restore_lazily(self, migration: IncomingMigration, record: OutcomeRecord, started: float) -> None: ...

    async def _relay_replies(self, keeper: PageKeeper) -> None: ...

    async def _tell(self, migration_id: str) -> None: ...

    def _own(self, work: Coroutine[Any, Any, None], name: str) -> None: ...


class PostCopy:
    async def _commit_lazy(self: SessionPort, migration: IncomingMigration, record: OutcomeRecord) -> None:
        """Restore with the memory still at the source: `criu lazy-pages` (in its keeper) first, then the
        engine's restore through androcond's runtime. The client hears "paging" once the container runs, and
        "running" (or "failed") once every page has arrived. The restore itself runs in a task of its own:
        the restoring tasks fault on lazy pages already, and their pages arrive as Pages frames, which only
        this session's reader takes."""
        target = migration.target
        assert target is not None
        started = time.monotonic()
        try:
            if migration.keeper is None:
                migration.keeper = await PageKeeper.spawn(target.checkpoint_dir)
            await migration.keeper.go()
            migration.pager_s = time.monotonic() - started
        except (RestoreError, OSError) as exc:
            await self._discard(migration, OutcomeState.FAILED, f"post-copy could not start: {exc}")
            await self._query(record.migration_id)
            return
        # From here on a dead agent leaves a record that names the keeper to kill (recovery.py).
        record.pager_pid, record.pager_start = migration.keeper.identity.pid, migration.keeper.identity.start
        await self.outcomes.put(record)
        self._own(self._relay_replies(migration.keeper), "pages-out")
        self._own(self._restore_lazily(migration, record, started), "lazy-restore")

    async def _restore_lazily(self: SessionPort, migration: IncomingMigration, record: OutcomeRecord,
                              started: float) -> None:
        target, keeper = migration.target, migration.keeper
        assert target is not None
        assert keeper is not None
        try:
            steps = await self.device.restore(target, migration.begin.checkpoint_name, clean=False)
        except RestoreError as exc:
            if not migration.finished:
                await self._discard(migration, OutcomeState.FAILED, f"{exc}{await keeper.log_reason()}")
            await self._tell(record.migration_id)
            return
        if migration.finished:
            return  # discarded meanwhile: the client went away during the restore
        record.state = OutcomeState.PAGING
        record.restore_seconds = time.monotonic() - started
        # Before the engine's restore: the page keeper and lazy-pages started, until lazy-pages is ready.
        record.restore_steps = {"pager": round(migration.pager_s, 3), **steps}
        await self.outcomes.put(record)
        log.info("resumed; pages arriving", container_id=record.container_id,
                 restore_s=round(record.restore_seconds, 3), steps=record.restore_steps)
        await self._tell(record.migration_id)
        code = await keeper.wait()
        if migration.finished:
            return  # discarded meanwhile (the client went away, or the agent shuts down)
        if code == 0:
            await self.device.clean_after_restore(target)
            await self._running(migration, record, record.restore_seconds)
            log.info("every page arrived", container_id=record.container_id)
        else:
            await self._discard(migration, OutcomeState.FAILED, f"criu lazy-pages exited with status {code} before "
                                f"every page arrived{await keeper.log_reason()}; the container was removed")
        await self._tell(record.migration_id)

    async def _tell(self: SessionPort, migration_id: str) -> None:
        """The outcome, from a task of post-copy: a client that is gone is the session reader's business."""
        try:
            await self._query(migration_id)
        except (ChannelClosed, ConnectionError, OSError) as exc:
            log.warning("could not tell the client the outcome", error=str(exc))

    def _own(self: SessionPort, work: Coroutine[Any, Any, None], name: str) -> None:
        """A task of this session's post-copy: whatever it raises ends the migration here (discarded, the
        client told), never the agent."""

        async def guarded() -> None:
            try:
                await work
            except Exception as exc:
                log.exception("post-copy task failed", task=name, error=str(exc))
                await self._end_unfinished(OutcomeState.FAILED,
                                           f"agent: {name} failed: {exc.__class__.__name__}: {exc}")
                if self.migration is not None:
                    await self._tell(self.migration.begin.migration_id)

        task = asyncio.create_task(guarded(), name=name)
        self._paging.add(task)
        task.add_done_callback(self._paging.discard)
        task.add_done_callback(lambda _task: work.close())  # cancelled before it ran: no "never awaited"

    async def _pages(self: SessionPort, pages: pb.Pages) -> None:
        migration = self.migration
        if migration is None or migration.keeper is None or not migration.keeper.started:
            raise ProtocolViolation("pages outside a post-copy restore")
        if migration.finished:
            return  # the last page is in, or the migration was discarded: late bytes mean nothing
        data = pages.data
        if pages.codec:
            try:
                data = await asyncio.to_thread(compression.decode, pages.codec, data, pages.raw_size)
            except (compression.CorruptChunk, compression.UnknownCodec) as exc:
                raise ProtocolViolation(f"pages that do not decompress: {exc}") from exc
        try:
            await migration.keeper.feed(data)
        except (ConnectionError, OSError) as exc:
            log.warning("lazy-pages took no more pages", error=str(exc))  # its exit status says why

    async def _relay_replies(self: SessionPort, keeper: PageKeeper) -> None:
        """lazy-pages' requests to the source's page server. A send that fails means the client is gone: the
        session's reader sees it too and discards the migration."""
        with contextlib.suppress(ChannelClosed, ConnectionError, OSError):
            async for data in keeper.replies():
                await self.send(pb.Frame(pages=pb.Pages(data=data)))
