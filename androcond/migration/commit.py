"""The commit, as a strategy: the target restores from what was shipped and answers what it runs.

- eager: one answer, once the container runs on the target;
- lazy (post-copy): the source's page server answers the target's page faults over the same link while the
  container already runs there; the target answers "paging" at the resume, then "running" at the last page.
  Until then the source's checkpoint is the container: a failure rolls back at the source (and whatever the
  container did on the target is lost).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from ..criu.lazy_dump import LazyDumpError
from ..criu.page_server import PageServer, PageServerError
from ..faults import Faults
from ..link.payload import Progress
from ..link.ssh import TransportError
from ..logging import get_logger
from ..protocol import protocol_pb2 as pb
from .plan import Frozen, LiveDump, Shipped
from .recorder import Recorder
from .roles import TargetLink
from .states import MigrationState

S = MigrationState
log = get_logger(__name__)


class CommitStrategy(Protocol):
    async def commit(self, link: TargetLink, shipped: Shipped, frozen: Frozen, recorder: Recorder,
                     progress: Progress) -> pb.Outcome: ...


class EagerCommit:
    async def commit(self, link: TargetLink, shipped: Shipped, frozen: Frozen, recorder: Recorder,
                     progress: Progress) -> pb.Outcome:
        t0 = time.monotonic()
        outcome = await link.commit(shipped.file_count)  # a broken link here is settled by asking the target
        recorder.time("restore_s", t0)
        record_steps(recorder, outcome)
        if outcome.restorer_seconds:  # emulated: the part of restore_s that the restorer itself took
            recorder.record.timings["restorer_s"] = round(outcome.restorer_seconds, 3)
        return outcome


class LazyCommit:
    def __init__(self, paging_s: float, faults: Faults, target_criu: str, work: Path | None) -> None:
        self.paging_s = paging_s
        self.faults = faults
        self.work = work  # where the page server works: in the migration's workspace, which a restart sweeps
        self.target_criu = target_criu  # its lazy-pages' page-transfer headers are CRIU's of that version

    async def commit(self, link: TargetLink, shipped: Shipped, frozen: Frozen, recorder: Recorder,
                     progress: Progress) -> pb.Outcome:
        t0 = time.monotonic()
        live = frozen.pages
        server: PageServer | LiveDump
        if live is not None:  # the flat freeze: the frozen tasks serve their pages
            live.speak_with(self.target_criu)
            server = live
        else:
            try:
                server = await PageServer.start(shipped.images, client_criu=self.target_criu, parent=self.work)
            except (PageServerError, OSError) as exc:
                raise TransportError(f"the page server did not start: {exc}") from exc

        async def resumed(outcome: pb.Outcome) -> None:
            recorder.time("restore_s", t0)
            record_steps(recorder, outcome)
            recorder.time("resumed_s", frozen.at)  # the downtime, should the move end done
            await recorder.transition(S.PAGING, f"running on {recorder.record.device} as "
                                                f"{outcome.container_id[:12]}; its memory is arriving")
            self.faults.inject("paging", recorder.record.container_name)

        try:
            outcome = await link.commit_lazy(shipped.file_count, server, resumed, self.paging_s)
            if live is not None and outcome.state == pb.OUTCOME_RUNNING:
                await self._confirm(live)
        finally:
            await server.close()
            # The memory, sent after the resume: in the live progress too, which the API shows (over the
            # journal's figure) until the migration has ended.
            progress.bytes_sent += server.bytes_served
            progress.wire_bytes += link.pages_wire_bytes
            recorder.record.bytes_sent = progress.bytes_sent
            recorder.record.wire_bytes = progress.wire_bytes
        if outcome.state == pb.OUTCOME_RUNNING:
            recorder.time("last_page_s", frozen.at)
        return outcome

    @staticmethod
    async def _confirm(live: LiveDump) -> None:
        """The device runs it with every page: the lazy dump ends, and with it the source's tasks. A dump that
        ends badly is logged, not a failure: the device's copy is the container now."""
        try:
            await live.confirm()
        except (LazyDumpError, OSError, TimeoutError) as exc:
            log.error("the lazy dump did not end cleanly after the device had every page", error=str(exc))


def record_steps(recorder: Recorder, outcome: pb.Outcome) -> None:
    """Where the target's restore went, as timings: the part the target itself measured (`restore_device_s`; the
    rest of `restore_s` is the link and this daemon) and its steps `restore_<step>_s` (pager, engine, runc, criu,
    answer)."""
    if outcome.restore_seconds:
        recorder.record.timings["restore_device_s"] = round(outcome.restore_seconds, 3)
    for step, seconds in outcome.restore_steps.items():
        recorder.record.timings[f"restore_{step}_s"] = round(seconds, 3)


def strategy(lazy: bool, paging_s: float, faults: Faults, target_criu: str = "",
             work: Path | None = None) -> CommitStrategy:
    return LazyCommit(paging_s, faults, target_criu, work) if lazy else EagerCommit()
