"""One client connection to the agent: hello, then at most one migration (begin, files, commit) and any
number of queries.

Every file is written straight into place as it arrives and its SHA-256 is checked as it lands. Until a
commit succeeds, everything written and the prepared container are recorded so that a broken stream, a bad
digest or an abort removes them: a set that did not verify is never restored.

Whatever ends a session early, the client hears it as one `Error` frame naming the phase and a code
(errors.classify), unless the client itself is gone; the unfinished migration is discarded first, so what the
client then asks about is already settled. File work runs in worker threads (the loop keeps serving the
channel), and work on a file descriptor is always awaited to its end, so a cancelled session never closes an
fd a thread still writes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from ..aio import complete
from ..errors import AndrocondError
from ..logging import get_logger, log_context
from ..protocol import compression
from ..protocol import protocol_pb2 as pb
from ..protocol.codes import ErrorCode, OutcomeState
from ..protocol.wire import (
    PROTOCOL_VERSION,
    ChannelClosed,
    FrameReader,
    FrameWriter,
    body,
    read_frame,
    write_frame,
)
from . import files
from .device import DeviceEngine, parse_create_config
from .errors import PEER_GONE, IdleTimeout, NoSpace, ProtocolViolation, RestoreError, ShuttingDown, classify
from .files import FREE_SPACE_MARGIN, OpenFile, free_bytes
from .fit import fit
from .incoming import IncomingMigration
from .lazy_pages import PageKeeper
from .outcomes import OutcomeRecord, OutcomeStore, check_id
from .post_copy import PostCopy
from .receive import Receiving
from .recovery import settle_if_stale
from .sourcing import OutgoingMigration, Sourcing

log = get_logger(__name__)

HELLO_TIMEOUT_S = 30.0
# A client that goes silent mid-migration for this long is treated as gone.
IDLE_TIMEOUT_S = 300.0
# How long an error frame may take to go out (a client that reads nothing must not hold the session).
ERROR_SEND_TIMEOUT_S = 5.0

# Phases, as named in Error.phase.
HELLO, BEGIN, IMAGE, FILES, COMMIT, QUERY, ABORT = "hello", "begin", "image", "files", "commit", "query", "abort"
SOURCE, FREEZE, SOURCE_END = "source", "freeze", "source-end"
_PHASE_OF_FRAME = {"begin": BEGIN, "commit": COMMIT, "query": QUERY, "abort": ABORT, "source_open": SOURCE,
                   "freeze": FREEZE, "source_end": SOURCE_END, "cross_prepare": SOURCE}


class AgentSession(Receiving, PostCopy, Sourcing):
    def __init__(self, device: DeviceEngine, outcomes: OutcomeStore, reader: FrameReader,
                 writer: FrameWriter) -> None:
        self.device = device
        self.outcomes = outcomes
        self.reader = reader
        self.writer = writer
        self.migration: IncomingMigration | None = None
        self.outgoing: OutgoingMigration | None = None  # the way back: this device is the source
        self.current: OpenFile | None = None
        self.phase = HELLO
        self._task: asyncio.Task[Any] | None = None
        self._bytes_stored = 0  # file data received in this session and written (or handed to the image load)
        self._stored_reported = 0
        self._paging: set[asyncio.Task[None]] = set()  # post-copy's relay and its wait for the last page

    async def send(self, frame: pb.Frame) -> None:
        await write_frame(self.writer, frame)

    async def send_error(self, code: ErrorCode, message: str) -> None:
        """Best effort and bounded: the peer may be gone or not reading; the failure is logged either way."""
        frame = pb.Frame(error=pb.Error(message=message, phase=self.phase, code=code.wire))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(ERROR_SEND_TIMEOUT_S):
                await self.send(frame)

    def _context(self) -> dict[str, str]:
        context = {"phase": self.phase}
        if self.migration is not None:
            context["migration_id"] = self.migration.begin.migration_id
        return context

    async def run(self) -> None:
        """Serve the connection to its end. Never raises, except CancelledError (after discarding)."""
        self._task = asyncio.current_task()
        try:
            await self._serve()
        except ChannelClosed:
            with log_context(**self._context()):
                log.info("client closed the connection")
        except asyncio.CancelledError:
            with log_context(**self._context()):
                log.warning("session cancelled: the agent is shutting down")
                discarded = await self._end_unfinished(OutcomeState.ABORTED, "the agent shut down before the commit")
            await self.send_error(ShuttingDown.code, "agent: shutting down" +
                                  ("; the migration was discarded" if discarded else ""))
            raise
        except Exception as exc:
            await self._fail(exc)
        finally:
            with log_context(**self._context()):
                await self._end_unfinished(OutcomeState.ABORTED, "connection ended before the migration finished")
                # Post-copy's tasks end with the keeper (discarded above, or done): reap them.
                for task in list(self._paging):
                    task.cancel()
                await asyncio.gather(*self._paging, return_exceptions=True)
                try:
                    await self._end_dump()
                except Exception:
                    log.exception("could not end the lazy dump this session held")

    async def _fail(self, exc: Exception) -> None:
        """Log the failure, discard the unfinished migration, then tell the client (if it is still there)."""
        code, message = classify(exc)
        with log_context(**self._context(), code=code):
            if code == PEER_GONE:
                log.warning("connection lost", error=message)
            elif code == ErrorCode.INTERNAL:
                log.exception("session failed", error=message)
            else:
                log.warning("session failed", error=message)
            state = OutcomeState.ABORTED if code in (PEER_GONE, IdleTimeout.code) else OutcomeState.FAILED
            await self._end_unfinished(state, message)
        if isinstance(code, ErrorCode):  # not a peer that is gone: it hears why
            await self.send_error(code, message)

    async def _end_unfinished(self, state: OutcomeState, reason: str) -> bool:
        """Discard a migration that did not finish; True if there was one. Never raises an Exception."""
        migration = self.migration
        if migration is None or migration.finished:
            return False
        try:
            await self._discard(migration, state, reason)
        except Exception:
            log.exception("could not discard the migration", migration_id=migration.begin.migration_id)
        return True

    async def _serve(self) -> None:
        await self._hello()
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    frame = await read_frame(self.reader)
            except TimeoutError as exc:
                raise IdleTimeout(f"agent: the client sent nothing for {IDLE_TIMEOUT_S:g} s") from exc
            await self._dispatch(frame)

    async def _hello(self) -> None:
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                frame = await read_frame(self.reader)
        except TimeoutError as exc:
            raise IdleTimeout(f"agent: no hello within {HELLO_TIMEOUT_S:g} s") from exc
        if body(frame) != "client_hello":
            raise ProtocolViolation(f"expected client_hello, got {body(frame)}")
        if frame.client_hello.protocol_version != PROTOCOL_VERSION:
            raise ProtocolViolation(f"protocol version {frame.client_hello.protocol_version} is not supported "
                                    f"(agent speaks {PROTOCOL_VERSION})")
        facts = self.device.facts
        if frame.client_hello.client_version != facts.agent_version:
            # Told apart, not refused: the protocol version above is what decides whether the two can talk.
            log.warning("the daemon is another build than this agent", daemon=frame.client_hello.client_version,
                        agent=facts.agent_version)
        # The flat freeze (post-copy back) needs runc's states of the engine's containers.
        exec_root = self.device.exec_root
        serves_pages = exec_root is not None and await asyncio.to_thread(exec_root.is_dir)
        await self.send(pb.Frame(agent_hello=pb.AgentHello(
            protocol_version=PROTOCOL_VERSION, agent_version=facts.agent_version, isa=facts.isa,
            page_size=facts.page_size, criu_version=facts.criu_version, engine_version=facts.engine_version,
            free_bytes=await free_bytes(facts.data_root), vdso=facts.vdso, vvar_size=facts.vvar_size,
            kernel_release=facts.kernel_release, criu_dumps_sockets=facts.criu_dumps_sockets,
            androcond_runtime=self.device.fast_restore, va_bits=facts.va_bits,
            criu_runc_options=list(facts.criu_runc_options), cgroup2=facts.cgroup2,
            absent_masked_paths=list(facts.absent_masked_paths), reports_stored=True,
            lazy_pages=self.device.post_copy, emulator=facts.emulator, emulator_version=facts.emulator_version,
            binfmt_x86_64=facts.binfmt_x86_64, codecs=compression.available(),
            compressed_pages=True, serves_pages=serves_pages, emulator_stub=facts.emulator_stub)))

    def _phase_of(self, frame: pb.Frame) -> str:
        kind = body(frame)
        if kind == "file_start":
            return IMAGE if frame.file_start.destination == pb.IMAGE_TAR else FILES
        if kind in ("file_data", "file_end"):
            image = self.current is not None and self.current.start.destination == pb.IMAGE_TAR
            return IMAGE if image else FILES
        return _PHASE_OF_FRAME.get(kind, self.phase)

    async def _dispatch(self, frame: pb.Frame) -> None:
        kind = body(frame)
        self.phase = self._phase_of(frame)
        with log_context(**self._context()):
            if kind == "file_data":
                await self._file_data(frame.file_data)
            elif kind == "file_start":
                await self._file_start(frame.file_start)
            elif kind == "file_end":
                await self._file_end(frame.file_end)
            elif kind == "begin":
                await self._begin(frame.begin)
            elif kind == "commit":
                await self._commit(frame.commit.file_count)
            elif kind == "pages":  # requests to this source's lazy dump, or pages for this target's restore
                await (self._source_pages if self.outgoing is not None else self._pages)(frame.pages)
            elif kind == "query":
                await self._query(frame.query.migration_id)
            elif kind == "abort":
                await self._abort(frame.abort.reason)
            elif kind == "source_open":
                await self._source_open(frame.source_open)
            elif kind == "freeze":
                await self._freeze(frame.freeze)
            elif kind == "source_end":
                await self._source_end(frame.source_end.action)
            elif kind == "cross_prepare":
                await self._cross_prepare(frame.cross_prepare)
            else:
                raise ProtocolViolation(f"unexpected {kind} frame")

    async def _settled(self, migration_id: str) -> OutcomeRecord | None:
        """The stored outcome, settled first if an agent that died left it in flight."""
        record = await self.outcomes.get(migration_id)
        if record is None:
            return None
        return await settle_if_stale(self.outcomes, self.device, record)

    # --- begin ----------------------------------------------------------------------------------------
    async def _begin(self, begin: pb.Begin) -> None:
        if self.migration is not None:
            raise ProtocolViolation("one migration per connection")
        check_id(begin.migration_id)
        previous = await self._settled(begin.migration_id)
        if previous is not None and previous.state in (OutcomeState.RUNNING, OutcomeState.RESTORING):
            raise ProtocolViolation(f"migration {begin.migration_id} is already {previous.state} here")
        free = await free_bytes(self.device.facts.data_root)
        if begin.total_bytes + FREE_SPACE_MARGIN > free:
            raise NoSpace(f"not enough space on the device: {begin.total_bytes} bytes announced, "
                          f"{free} free (keeping {FREE_SPACE_MARGIN} spare)")
        # Fitted now, before the daemon freezes anything: a host port taken here refuses the migration.
        fitted = await fit(self.device.engine, parse_create_config(begin.create_config_json))
        # androcond's restorer rebuilds it, not CRIU. Natively (home from emulation) through androcond's runtime,
        # which starts it so once: its configuration stays its own, its restart policy too.
        by_restorer = begin.emulate or (begin.native_plan and not self.device.fast_restore)
        if self.device.fast_restore and not begin.emulate:
            fitted.adjusted["HostConfig.Runtime"] = {
                "from": (fitted.body.get("HostConfig") or {}).get("Runtime"), "to": self.device.facts.runtime,
                "why": ("androcond's runtime starts it once with androcond's restorer (for all else it is runc)"
                        if begin.native_plan else
                        "androcond's runtime restores the images in place (for all else it is runc)")}
        if by_restorer and fitted.restart_policy:
            # Its entry point rebuilds the process once, from files removed after the restore: started again,
            # it could only fail.
            fitted.adjusted["HostConfig.RestartPolicy"] = {
                "from": fitted.restart_policy, "to": None,
                "why": "a container rebuilt by androcond's restorer cannot be started afresh by its engine"}
            fitted.restart_policy = None
        for name, change in fitted.adjusted.items():
            log.info("configuration adjusted for this device", field=name, why=change.get("why"))
        self.migration = IncomingMigration(begin, fitted=fitted)
        await self.outcomes.put(OutcomeRecord(begin.migration_id, OutcomeState.RECEIVING))
        with log_context(migration_id=begin.migration_id):
            log.info("migration begins", container=begin.container_name, image=begin.image,
                     total_bytes=begin.total_bytes, files=begin.file_count)
        if await self.device.has_image(begin.image):
            await self._prepare(self.migration)
            assert self.migration.target is not None
            await self.send(pb.Frame(begin_ack=pb.BeginAck(container_id=self.migration.target.container_id,
                                                           adjusted_json=json.dumps(fitted.adjusted))))
        else:
            await self.send(pb.Frame(begin_ack=pb.BeginAck(need_image=True, adjusted_json=json.dumps(fitted.adjusted))))

    async def _prepare(self, migration: IncomingMigration) -> None:
        begin = migration.begin
        assert migration.fitted is not None
        migration.target = await self.device.create(begin.container_name, migration.fitted.body,
                                                    begin.checkpoint_name, begin.migration_id, lazy=begin.lazy,
                                                    emulate=begin.emulate, native_plan=begin.native_plan)
        # Should this process die now, whoever settles the record knows which container to remove.
        await self.outcomes.put(OutcomeRecord(begin.migration_id, OutcomeState.RECEIVING, migration.target.container_id,
                                              bytes_received=migration.bytes_received))
        if begin.lazy:  # its interpreter starts now, not in the downtime (lazy_pages.PageKeeper.spawn)
            migration.keeper = await PageKeeper.spawn(migration.target.checkpoint_dir)

    # --- commit, query, abort --------------------------------------------------------------------------
    async def _commit(self, file_count: int = 0) -> None:
        migration = self._active()
        begin = migration.begin
        if self.current is not None:
            raise ProtocolViolation("commit while a file is still open")
        if migration.failed or migration.target is None:
            raise ProtocolViolation(f"nothing to restore: {migration.failed or 'no container was prepared'}")
        expected = file_count or begin.file_count
        if expected and migration.files_verified != expected:
            raise ProtocolViolation(f"commit after {migration.files_verified} of {expected} files")
        record = OutcomeRecord(begin.migration_id, OutcomeState.RESTORING, migration.target.container_id,
                               bytes_received=migration.bytes_received)
        if begin.lazy:
            await self._commit_lazy(migration, record)
            return
        await self.outcomes.put(record)
        started = time.monotonic()
        try:
            if begin.emulate or begin.native_plan:
                record.restorer_seconds = await self.device.start_emulated(migration.target,
                                                                           native=begin.native_plan)
            else:
                record.restore_steps = await self.device.restore(migration.target, begin.checkpoint_name)
        except RestoreError as exc:
            await self._discard(migration, OutcomeState.FAILED, str(exc))
        else:
            await self._running(migration, record, time.monotonic() - started)
        await self._query(begin.migration_id)

    async def _running(self, migration: IncomingMigration, record: OutcomeRecord, restore_seconds: float) -> None:
        migration.finished = True
        record.state = OutcomeState.RUNNING
        record.restore_seconds = restore_seconds
        record.pager_pid = record.pager_start = 0
        await self.outcomes.put(record)
        log.info("restored", container_id=record.container_id, restore_s=round(record.restore_seconds, 3),
                 steps=record.restore_steps)
        if migration.fitted is not None and migration.fitted.restart_policy:
            # Only now: a policy on a container whose restore failed would start it afresh, a second copy.
            await self.device.apply_restart_policy(record.container_id, migration.fitted.restart_policy)

    async def _query(self, migration_id: str) -> None:
        check_id(migration_id)
        record = await self._settled(migration_id)
        if record is None:
            record = OutcomeRecord(migration_id, OutcomeState.UNKNOWN)
        await self.send(pb.Frame(outcome=pb.Outcome(
            migration_id=record.migration_id, state=record.state.wire, container_id=record.container_id,
            error=record.error, restore_seconds=record.restore_seconds, bytes_received=record.bytes_received,
            restorer_seconds=record.restorer_seconds, restore_steps=record.restore_steps)))

    async def _abort(self, reason: str) -> None:
        migration = self._active()
        await self._discard(migration, OutcomeState.ABORTED, reason or "aborted by the client")
        await self._query(migration.begin.migration_id)

    async def _discard(self, migration: IncomingMigration, state: OutcomeState, error: str) -> None:
        """Remove every file written and the prepared container; record why. Not interrupted by a
        cancellation (each step is bounded: thread work, engine calls with their timeouts)."""
        migration.finished = True
        await complete(self._discard_now(migration, state, error))

    async def _discard_now(self, migration: IncomingMigration, state: OutcomeState, error: str) -> None:
        current, self.current = self.current, None
        fd = None
        if current is not None:
            fd, current.fd = current.fd, None
            if current.image_load is not None:
                current.image_load.cancel()
                await asyncio.gather(current.image_load, return_exceptions=True)
        failures = await asyncio.to_thread(files.remove_files, fd, list(reversed(migration.written)))
        for path, problem in failures:
            log.error("could not remove a received file", path=str(path), error=problem)
        if migration.target is not None:
            await self.device.clean_after_restore(migration.target)  # spooled images, stub, containerd's copy
            try:
                await self.device.discard(migration.target.container_id)
            except AndrocondError as exc:
                log.error("could not remove the prepared container", error=str(exc),
                          container_id=migration.target.container_id)
                if migration.keeper is not None and migration.keeper.started:
                    # Killing the keeper under a container that may still run would turn its missing pages into
                    # zeros: it stays until the container is removed by hand (its pid is in this line).
                    log.error("the page keeper stays until the container is removed",
                              keeper_pid=migration.keeper.identity.pid)
                    migration.keeper = None
        if migration.keeper is not None:
            await migration.keeper.kill()
        await self.outcomes.put(OutcomeRecord(migration.begin.migration_id, state,
                                              error=error, bytes_received=migration.bytes_received))
        log.warning("migration discarded", state=state, error=error)
