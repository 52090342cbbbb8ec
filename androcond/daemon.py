"""``androcond run``: the daemon's life cycle.

Signals follow uvicorn's rule: the first SIGTERM/SIGINT starts a graceful shutdown under a time budget
(``daemon.shutdown_timeout``); a second one forces an immediate exit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from .config import Settings
from .logging import get_logger, log_context
from .watcher import ContainerSeen, Watcher

log = get_logger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_requested = asyncio.Event()
        self.ready = asyncio.Event()
        self.watcher = Watcher(settings.docker.host, settings.devices.keys(), self._on_container,
                               on_ready=self.ready.set)

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def _on_container(self, seen: ContainerSeen) -> None:
        with log_context(container=seen.name, container_id=seen.container_id[:12]):
            if seen.rejection is not None:
                log.warning("migration label rejected; container left running", origin=seen.origin,
                            reason=seen.rejection)
            elif seen.labels is not None:
                # Migration itself is a later stage of the pipeline; for now the daemon reports what it would do.
                log.info("labelled container seen", origin=seen.origin, device=seen.labels.device,
                         delay_s=seen.labels.delay_s, keep_source=seen.labels.keep_source)

    async def run(self) -> int:
        log.info("androcond starting", config=str(self.settings.source or "built-in defaults"),
                 docker_host=self.settings.docker.host, devices=sorted(self.settings.devices), pid=os.getpid())
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(self.watcher.run(), name="watcher")
            ready = tg.create_task(self._log_ready(), name="ready-reporter")
            await self.stop_requested.wait()
            log.info("shutting down", budget_s=self.settings.daemon.shutdown_timeout)
            # Phase 1: stop taking new work. (Later phases drain in-flight migrations within the budget.)
            watcher.cancel()
            ready.cancel()
        log.info("stopped")
        return EXIT_OK

    async def _log_ready(self) -> None:
        await self.ready.wait()
        log.info("ready")


async def serve(settings: Settings) -> int:
    """Run the daemon until a signal asks it to stop; return the process exit code."""
    daemon = Daemon(settings)
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
    try:
        run = asyncio.ensure_future(daemon.run())
        # The budget starts only once a stop was requested; until then the daemon runs indefinitely.
        stop_requested = asyncio.ensure_future(daemon.stop_requested.wait())
        await asyncio.wait({run, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if not run.done():
            try:
                async with asyncio.timeout(settings.daemon.shutdown_timeout):
                    return await asyncio.shield(run)
            except TimeoutError:
                log.error("shutdown budget exceeded, cancelling what is left",
                          budget_s=settings.daemon.shutdown_timeout)
                run.cancel()
                return EXIT_FAILED
        stop_requested.cancel()
        return run.result()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
