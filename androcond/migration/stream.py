"""The stream phase: the images as the target needs them (recoded for its ISA or profile, else as dumped), the
writable layer and the volumes, across ISAs each task's binary for the target — over the link, with a digest
per file and the target's verdict on each."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..faults import Faults
from ..images.lazy import split_lazy
from ..link.layer import LayerError, checkpoint_files, executables_for_target, replace_files
from ..link.payload import OutgoingFile, Progress
from ..link.ssh import TransportError
from ..logging import get_logger
from ..protocol import protocol_pb2 as pb
from ..protocol.emulation import PLAN
from ..recoder import recode_async, stages_for
from ..recoder.arch import VARIANT_SUFFIX
from . import emulate
from .errors import budget
from .journal import MigrationRecord
from .plan import Frozen, Plan, Shipped
from .recorder import Recorder
from .roles import Source, TargetLink

log = get_logger(__name__)


# The workspace's directories under the state directory, one subdirectory per migration in each, in the order
# of Workspace's fields.
WORKSPACE_KINDS = ("recode", "lazy", "emulation", "pulled")


@dataclass(frozen=True)
class Workspace:
    """The daemon's own files for one migration (removed when it ends)."""

    recoded: Path  # the recoded images, when the target needs them recoded
    lazy: Path  # post-copy: the target's pagemaps and pages files (images/lazy.py)
    emulation: Path  # under emulation: the restorer's plan
    pulled: Path  # the way back: what the device sent (its checkpoint, writable layer, volumes)

    @classmethod
    def of(cls, state_dir: Path, migration_id: str) -> Workspace:
        return cls(*(state_dir / kind / migration_id for kind in WORKSPACE_KINDS))

    async def remove(self) -> None:
        for directory in (self.recoded, self.lazy, self.emulation, self.pulled):
            await asyncio.to_thread(shutil.rmtree, directory, True)

    @staticmethod
    async def sweep(state_dir: Path, keep: set[str]) -> list[str]:
        """Remove what migrations left in the workspaces but those in `keep` (a daemon killed after "done" never
        ran its own cleanup). The migrations whose workspace went, by id."""

        def sweep() -> list[str]:
            gone: set[str] = set()
            for kind in WORKSPACE_KINDS:
                if not (state_dir / kind).is_dir():
                    continue
                for directory in (state_dir / kind).iterdir():
                    if directory.name not in keep:
                        shutil.rmtree(directory, True)
                        gone.add(directory.name)
            return sorted(gone)

        return await asyncio.to_thread(sweep)


def needs_recode(plan: Plan) -> bool:
    """Whether the images must be recoded for the target: across ISAs always, else for what the target's kernel,
    CRIU or profile needs of the same ISA's images."""
    return plan.cross is not None or bool(stages_for(plan.recode.target, plan.recode))


def relays(plan: Plan) -> bool:
    """Whether a source whose files come to the daemon (the way back) hands them on to the target as they come:
    when nothing here reads them whole (a recode, the emulator's plan, a page server over the images)."""
    return not (needs_recode(plan) or plan.emulated is not None or plan.lazy)


async def recode(plan: Plan, frozen: Frozen, *, root: Path | None, out: Path, recorder: Recorder,
                 deadline_s: float, faults: Faults) -> Path:
    """The images as the target needs them, else the dump as it is. `root` is the stopped container's root
    filesystem (a cross-ISA recode reads the binaries there)."""
    faults.inject("recode", recorder.record.container_name)
    if not needs_recode(plan):
        return frozen.images
    options = replace(plan.recode, root=root or Path("/"))
    t0 = time.monotonic()
    await asyncio.to_thread(shutil.rmtree, out, True)
    async with budget("recode", deadline_s):
        report = await recode_async(frozen.images, out, options)
    if report.warnings:
        # Shown with the migration (`migrations show`, the journal), not only in the log.
        recorder.adjusted({"(recode)": {"why": "; ".join(report.warnings)}}, "recoder")
    recorder.time("recode_s", t0)
    return out


async def stream(source: Source, link: TargetLink, plan: Plan, frozen: Frozen, *, workspace: Workspace,
                 recorder: Recorder, recode_s: float, on_progress: Callable[[Progress], None],
                 faults: Faults) -> Shipped:
    """Send the checkpoint, the writable layer and the volumes (read now that the container is stopped);
    across ISAs also the target's variant of every task's binary, at the binary's path."""
    record: MigrationRecord = recorder.record
    faults.inject("stream", record.container_name)
    t0 = time.monotonic()
    if frozen.relayed is not None:  # the source's files as they come: nothing reads them whole on the way
        relayed = frozen.relayed
        if faults.armed("restore-refused", record.container_name):
            relayed = _emptied(relayed, PLAN if plan.native_resume else "inventory.img")
        if plan.native_resume:  # the target has no restorer of its own
            relayed = _after(await asyncio.to_thread(emulate.restorer_file), relayed)
        sent = await link.send_files(relayed, progress=on_progress)
        log.info("relayed the source's files to the target as they came", files=sent.files_sent,
                 bytes=sent.bytes_sent)
        return _shipped(sent, frozen.images, recorder, t0)
    cross = plan.cross
    async with contextlib.AsyncExitStack() as mounted:
        # The root stays mounted until the binaries placed from it have been sent.
        root = await mounted.enter_async_context(source.mounted_root(plan.inspect)) if cross is not None else None
        images = await recode(plan, frozen, root=root, out=workspace.recoded, recorder=recorder,
                              deadline_s=recode_s, faults=faults)
        if record.way_back and faults.armed("restore-refused", record.container_name):
            # The images the device sent (it keeps its own checkpoint, the rollback): the target's CRIU refuses.
            await asyncio.to_thread((images / "inventory.img").write_bytes, b"")
        restorer: list[OutgoingFile] = []
        if plan.emulated is not None:
            p0 = time.monotonic()
            restorer, summary = await emulate.files(
                images, workspace.emulation, cut_plan=faults.armed("bad-plan", record.container_name),
                stub=plan.emulated.stub)
            recorder.time("plan_s", p0)
            log.info("the restorer's plan is made", threads=summary.threads, vmas=summary.vmas,
                     page_bytes=summary.page_bytes, notes=list(summary.notes))
            if summary.notes:
                recorder.adjusted({"(emulation)": {"why": "; ".join(summary.notes)}}, "restorer")

        def collect() -> list[OutgoingFile]:
            files = checkpoint_files(images)
            if plan.lazy:  # the target gets the lazy pages later, from the page server
                split = split_lazy(images, workspace.lazy)
                log.info("post-copy: pages left to the page server", lazy_bytes=split.lazy_bytes,
                         eager_bytes=split.eager_bytes)
                files = replace_files(files, checkpoint_files(split.directory))
            files += restorer + source.payload(plan.inspect)
            if cross is not None and root is not None:
                # Injected: the target keeps the source's binary, as if it was never replaced (its CRIU refuses).
                isa = platform.machine() if faults.armed("wrong-exe", record.container_name) else cross.target
                files = replace_files(files, executables_for_target(root, list(cross.executables),
                                                                    VARIANT_SUFFIX[isa]))
            return files

        try:
            files = await asyncio.to_thread(collect)
        except (LayerError, OSError) as exc:
            raise TransportError(f"cannot read what must move: {exc}") from exc
        sent = await link.send_files(files, progress=on_progress)
    return _shipped(sent, images, recorder, t0)


def _shipped(sent: Progress, images: Path, recorder: Recorder, t0: float) -> Shipped:
    recorder.record.bytes_sent = sent.bytes_sent
    recorder.record.wire_bytes = sent.wire_bytes
    recorder.time("stream_s", t0)
    return Shipped(sent.files_sent, images)


async def _after(first: OutgoingFile, files: AsyncIterator[OutgoingFile]) -> AsyncIterator[OutgoingFile]:
    yield first
    async for spec in files:
        yield spec


async def _emptied(files: AsyncIterator[OutgoingFile], path: str) -> AsyncIterator[OutgoingFile]:
    """An injected fault: the checkpoint's `path` goes empty (the source's data for it is still read), with the
    digest of what is sent, so the target's CRIU (or restorer) refuses it while the source keeps its own."""
    async for spec in files:
        if spec.destination == pb.CHECKPOINT and spec.path == path and spec.stream is not None:
            yield replace(spec, size=0, stream=_drained(spec.stream), vouched=None)
        else:
            yield spec


def _drained(stream: Callable[[], AsyncIterator[bytes]]) -> Callable[[], AsyncIterator[bytes]]:
    async def nothing() -> AsyncIterator[bytes]:
        async for _ in stream():
            pass
        return
        yield b""  # pragma: no cover - makes this an async generator

    return nothing
