"""``androcond run``: the daemon's life cycle.

Start: open the journal, settle migrations a previous run left unfinished, follow the Docker events.
Stop (SIGTERM/SIGINT), in phases under ``daemon.shutdown_timeout``: stop taking new migrations, let those in
flight finish, then cancel what is left — a cancelled migration restores its container at the source, so
nothing is left frozen. A second signal forces an immediate exit (uvicorn's rule).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from aiohttp import web

from ..config import DeviceSettings, Settings
from ..criu import kdat
from ..engine import Engine
from ..faults import NO_FAULTS, Faults
from ..link.adb import AdbClient
from ..logging import get_logger, log_context
from ..migration import Context, new_record, phase_timeouts
from ..migration.journal import HOME, Journal, JournalError, MigrationRecord
from ..migration.roles import Source
from ..migration.states import MigrationState
from ..migration.stream import Workspace
from ..source.agent import AgentSource
from ..source.host import HostSource
from ..target.agent import agent_links
from ..target.host import home_links, settle_home
from ..tasks import TaskOwner
from .api import ApiState, build_app, start_api
from .engine_lock import EngineLock
from .events import event_kind_for_state
from .metrics import Metrics
from .notify import NotifyError, Webhooks
from .requests import AlreadyMigrating, MigrationRequest, NotAccepting
from .resolver import Resolver
from .scheduler import Scheduler
from .systemd import Notifier, watchdog_loop
from .watcher import ContainerSeen, Watcher

log = get_logger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
WEBHOOK_FLUSH_S = 2.0
# After the shutdown budget, rollbacks of cancelled migrations still get this long to finish.
SETTLE_AT_SHUTDOWN_S = 30.0


class Daemon:
    def __init__(self, settings: Settings, notifier: Notifier | None = None, faults: Faults = NO_FAULTS) -> None:
        self.settings = settings
        self.faults = faults
        self.notifier = notifier or Notifier()
        self.stop_requested = asyncio.Event()
        self.ready = asyncio.Event()
        self.watcher = Watcher(settings.docker.host, settings.devices.keys(), self._on_container,
                               on_ready=self.ready.set)
        self.engine = Engine(settings.docker.host)
        self.adb = AdbClient()
        # Rollbacks started by migrations cancelled at shutdown: waited for, within a budget, before exit.
        self.background = TaskOwner()
        self.journal: Journal | None = None
        self.scheduler: Scheduler | None = None
        self.resolver: Resolver | None = None
        self._background: list[asyncio.Task[None]] = []
        self._api: web.AppRunner | None = None
        self.exit_code = EXIT_OK
        self.webhooks: Webhooks | None = None
        self._delivery: asyncio.Task[None] | None = None
        self.metrics = Metrics(self._live_state)

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def _on_container(self, seen: ContainerSeen) -> None:
        # The watcher's callback: nothing it raises may end the event stream (or the daemon with it).
        try:
            await self._admit(seen)
        except Exception as exc:
            log.error("could not act on a labelled container", container=seen.name, error=str(exc), exc_info=exc)

    async def _admit(self, seen: ContainerSeen) -> None:
        with log_context(container=seen.name, container_id=seen.container_id[:12]):
            assert self.journal is not None
            assert self.scheduler is not None
            if seen.rejection is not None:
                log.warning("migration label rejected; container left running", origin=seen.origin,
                            reason=seen.rejection)
                record = new_record(seen.container_id, seen.name, "", "label", False)
                record.state, record.error = MigrationState.REJECTED, seen.rejection
                await self.journal.create(record)
                await self._on_migration_change(record)
                self.metrics.migration_ended(record)
                return
            if seen.labels is None:
                return
            log.info("labelled container seen", origin=seen.origin, device=seen.labels.device,
                     delay_s=seen.labels.delay_s, keep_source=seen.labels.keep_source)
            last = await self.journal.last_for_container(seen.container_id)
            if last is not None and last.state != MigrationState.DONE:
                # A rollback restarts the container at the source, which replays its label (its start event
                # can even arrive before the rollback is journaled): migrating again on our own would loop.
                # `androcond migrate` asks explicitly.
                log.info("not migrating again on its own after an unsuccessful or unfinished migration",
                         last_migration=last.id, last_state=last.state)
                return
            latest = await self.journal.last_for_name(seen.name)
            if latest is not None and latest.way_back and latest.device == HOME:
                # It comes (or came) home on request: its label would send it straight out again. Its start
                # event can arrive before the way back is journaled done.
                log.info("not migrating on its own: it was brought back", last_migration=latest.id,
                         came_from=latest.source)
                return
            try:
                await self.scheduler.submit(MigrationRequest(
                    seen.container_id, seen.name, seen.labels.device, origin="label",
                    keep_source=seen.labels.keep_source, delay_s=seen.labels.delay_s))
            except AlreadyMigrating as exc:
                log.info("already being migrated", migration_id=exc.record.id)
            except NotAccepting:
                log.info("shutting down; not starting a migration")

    async def run(self) -> int:
        settings = self.settings
        log.info("androcond starting", config=str(settings.source or "built-in defaults"),
                 docker_host=settings.docker.host, devices=sorted(settings.devices), pid=os.getpid())
        lock = EngineLock(settings.docker.host)
        lock.acquire(settings.source, settings.daemon.api)  # EngineTaken: exit 2, nothing started
        try:
            self.journal = await Journal.open(settings.daemon.state_dir / "journal.sqlite3")
            try:
                self.webhooks = await Webhooks.open(settings)
                return await self._run(self.journal)
            finally:
                if self.webhooks is not None:
                    await self.webhooks.close()
                await self.engine.close()
                await self.journal.close()
        finally:
            lock.release()

    async def _run(self, journal: Journal) -> int:
        async with asyncio.TaskGroup() as tg:
            started = tg.create_task(self._start(tg, journal), name="startup")
            await self.stop_requested.wait()
            started.cancel()
            budget = self.settings.daemon.shutdown_timeout
            in_flight = self.scheduler.in_flight if self.scheduler is not None else 0
            log.info("shutting down", budget_s=budget, in_flight=in_flight)
            self.notifier.stopping(status=f"shutting down, {in_flight} migration(s) in flight")
            # Phase 1: no new work.
            for task in self._background:
                task.cancel()
            # Phase 2: let migrations in flight finish within the budget; phase 3: cancel (they roll back).
            if self.scheduler is not None:
                try:
                    async with asyncio.timeout(budget):
                        await self.scheduler.drain()
                except TimeoutError:
                    log.warning("shutdown budget spent; rolling back migrations still in flight",
                                in_flight=self.scheduler.in_flight)
                    self.scheduler.cancel_all()
            # Phase 3b: the rollbacks those cancels started, within a bound of their own; what is left is
            # cancelled too and stays in the journal for the next start to resolve.
            left = await self.background.wait(SETTLE_AT_SHUTDOWN_S)
            if left:
                log.error("rollbacks still running at exit; the next start resolves them", count=left)
                self.background.cancel()
            # Phase 4: a moment for the last events to go out; the outbox keeps the rest for the next start.
            if self.webhooks is not None and self._delivery is not None:
                try:
                    async with asyncio.timeout(WEBHOOK_FLUSH_S):
                        await self.webhooks.drain()
                except TimeoutError:
                    log.info("webhook events left in the outbox for the next start",
                             queued=self.webhooks.stats().get("queue_depth", 0))
                self._delivery.cancel()
        if self._api is not None:
            await self._api.cleanup()
        log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _start(self, tg: asyncio.TaskGroup, journal: Journal) -> None:
        settings = self.settings

        timeouts = phase_timeouts(settings.timeouts)
        devices = agent_links(self.adb, timeouts, self.faults)

        def source(record: MigrationRecord) -> Source:
            if record.way_back:  # a device's agent; a device no longer configured cannot be reached
                device = settings.devices.get(record.source) or DeviceSettings(name=record.source)
                return AgentSource(devices, device, record, journal, timeouts=settings.timeouts,
                                   workspace=Workspace.of(settings.daemon.state_dir, record.id).pulled,
                                   home=self.engine)
            return HostSource(self.engine, settings.docker, record, settings.timeouts.checkpoint, faults=self.faults)

        await kdat.keep_probe()  # before any checkpoint: each CRIU run of this boot then skips its kernel probe
        try:
            await settle_home(settings.docker.host, settings.daemon.state_dir)
        except Exception as exc:  # each later link to the host's engine settles them too
            log.error("could not settle what a previous run left on the host's target", error=str(exc))
        try:
            unfinished = {record.id for record in await journal.unfinished()}
            swept = await Workspace.sweep(settings.daemon.state_dir, keep=unfinished)
            if swept:
                log.info("removed what finished migrations left in the workspace", migrations=swept)
        except (OSError, JournalError) as exc:
            log.error("could not sweep the migrations' workspace", error=str(exc))
        links = home_links(settings.docker.host, settings.daemon.state_dir, timeouts, devices)
        ctx = Context(settings, journal, links=links, sources=source, on_change=self._on_migration_change,
                      on_end=self.metrics.migration_ended, background=self.background, faults=self.faults)
        self.scheduler = Scheduler(ctx, journal, self.settings.daemon.max_migrations, tg.create_task,
                                   on_released=self._on_released)
        self.resolver = Resolver(ctx, journal, self.scheduler.running, self.settings.timeouts.resolve_backoff_max)
        try:
            scheduler = self.scheduler
            api = ApiState(self.settings, journal, self.engine, self.adb, submit=scheduler.submit,
                           in_flight=lambda: scheduler.in_flight, live_progress=scheduler.live_progress,
                           following=lambda: self.watcher.following, metrics=self.metrics)
            self._api = await start_api(build_app(api), self.settings.daemon.api)
        except OSError as exc:
            log.error("cannot serve the API", address=self.settings.daemon.api, error=str(exc))
            self.exit_code = EXIT_FAILED
            self.request_stop()
            return
        assert self.webhooks is not None
        # Webhook delivery runs until the very end of the daemon (closed after the task group), so events of
        # migrations that finish during shutdown still go out; what is left waits in the outbox.
        self._delivery = tg.create_task(self.webhooks.run(), name="webhooks")
        self._background = [tg.create_task(self.resolver.run(), name="resolver"),
                            tg.create_task(self.watcher.run(), name="watcher"),
                            tg.create_task(self._log_ready(), name="ready-reporter")]

    def _on_released(self, record: MigrationRecord) -> None:
        if not record.finished and self.resolver is not None:
            self.resolver.wake()  # ended unresolved: the resolver asks the device again from now on

    async def _on_migration_change(self, record: MigrationRecord) -> None:
        in_flight = self.scheduler.in_flight if self.scheduler is not None else 0
        self.notifier.status(f"following Docker events; {in_flight} migration(s) in flight")
        kind = event_kind_for_state(record.state)
        if kind is not None and self.webhooks is not None:
            try:
                await self.webhooks.publish(record, kind)
            except NotifyError as exc:  # a broken outbox must never fail a migration
                log.error("could not queue a webhook event", error=str(exc), kind=kind)

    def _live_state(self) -> dict[str, int]:
        live = dict(self.webhooks.stats()) if self.webhooks is not None else {}
        live["in_flight"] = self.scheduler.in_flight if self.scheduler is not None else 0
        live["reconnects"] = self.watcher.reconnects
        return live

    async def _log_ready(self) -> None:
        await self.ready.wait()
        log.info("ready")
        self.notifier.ready(status="following Docker events; 0 migration(s) in flight")


async def serve(settings: Settings, faults: Faults = NO_FAULTS) -> int:
    """Run the daemon until a signal asks it to stop; return the process exit code. `faults`: the bed's."""
    # Read and cleared before anything starts a subprocess, which must not inherit our systemd socket.
    notifier = Notifier.from_environ(unset=True)
    daemon = Daemon(settings, notifier, faults)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("signal received, stopping gracefully", signal=signal.Signals(signum).name)
            daemon.request_stop()
        else:
            log.warning("second signal, forcing exit", signal=signal.Signals(signum).name)
            sys.stderr.flush()
            os._exit(EXIT_FAILED)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    # Pings from the event loop itself: a stuck loop stops them and systemd restarts us. It runs until the
    # very end, so a long drain at shutdown is not mistaken for a hang.
    watchdog = asyncio.create_task(watchdog_loop(notifier), name="systemd-watchdog")
    try:
        return await daemon.run()
    finally:
        watchdog.cancel()
        await asyncio.gather(watchdog, return_exceptions=True)
        notifier.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
