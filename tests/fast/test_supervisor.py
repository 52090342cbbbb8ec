"""The migration supervisor and the scheduler, with small fakes for the engine and the agent connection:
what is tested is how failures are contained and settled (the real behaviour runs on the bed, in
tests/agent/test_daemon_faults.py). The journal is the real one, on a temporary SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from androcond.config import Address, DaemonSettings, DeviceSettings, DockerSettings, Settings, TimeoutSettings
from androcond.daemon.requests import AlreadyMigrating, MigrationRequest, NotAccepting
from androcond.daemon.scheduler import Scheduler
from androcond.engine import EngineError
from androcond.link.payload import OutgoingFile, Progress
from androcond.link.ssh import TransportError
from androcond.migration.journal import Journal, MigrationRecord
from androcond.migration.roles import LinkFactory, TargetLink
from androcond.migration.states import MigrationState
from androcond.pipeline import Context, Migration, new_record, resolve
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.codes import OutcomeState
from androcond.source.host import HostSource, Machine

S = MigrationState
CID = "c" * 64
# The source machine, as the tests describe it rather than as this one is: the tier reads nothing of the host.
MACHINE = Machine(isa="x86_64", criu_options=("tcp-close",), cgroup_v2=True, absent_paths=frozenset(),
                  page_server_blocker="")


class FakeEngine:
    """The source engine: a running container with an overlay2 layer in a temporary directory."""

    def __init__(self, root: Path, *, inspect_error: BaseException | None = None, stats: Any = None) -> None:
        self.root = root
        self.running = True
        self.inspect_error = inspect_error
        self.stats_answer = stats
        self.started_from: list[str | None] = []
        (root / "upper").mkdir(parents=True)
        (root / "upper" / "note").write_text("hello")

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        if self.inspect_error is not None:
            raise self.inspect_error
        return {"Id": CID, "State": {"Running": self.running, "Pid": 0, "Status": "running"},
                "Config": {"Image": "img", "Cmd": ["/bin/counter"]}, "HostConfig": {}, "Mounts": [],
                "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": str(self.root / "upper")}}}

    async def info(self) -> dict[str, Any]:
        return {"DockerRootDir": str(self.root / "docker")}

    async def stats(self, ref: str) -> Any:
        return self.stats_answer

    async def create_checkpoint(self, ref: str, name: str) -> None:
        images = self.root / "docker" / "containers" / CID / "checkpoints" / name
        images.mkdir(parents=True)
        (images / "pstree.img").write_bytes(b"\0" * 16)
        self.running = False

    async def start_container(self, ref: str, *, checkpoint: str | None = None) -> None:
        self.started_from.append(checkpoint)
        self.running = True

    async def remove_container(self, ref: str, *, force: bool = False) -> None:
        self.running = False


class FakeLink:
    """The agent connection: answers the hello, begin and query; `fail_at` names the call that breaks."""

    outcome_state = "running"
    fail_at = ""
    failure: BaseException = RuntimeError("a bug in the transport")
    opened = 0
    hang = False

    def __init__(self) -> None:
        # A device configured as the source machine is (its CRIU restores what the source dumps).
        self.hello = pb.AgentHello(isa=MACHINE.isa, free_bytes=1 << 40, criu_runc_options=list(MACHINE.criu_options))

    async def __aenter__(self) -> FakeLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _maybe_fail(self, call: str) -> None:
        if type(self).fail_at == call:
            raise type(self).failure

    async def begin(self, begin: pb.Begin) -> pb.BeginAck:
        self._maybe_fail("begin")
        return pb.BeginAck(container_id="target")

    async def send_files(self, files: list[OutgoingFile], **_: Any) -> Progress:
        self._maybe_fail("send_files")
        if type(self).hang:
            await asyncio.Event().wait()
        return Progress(bytes_sent=sum(f.size for f in files), files_sent=len(files))

    async def commit(self, file_count: int = 0) -> pb.Outcome:
        self._maybe_fail("commit")
        return pb.Outcome(state=pb.OUTCOME_RUNNING, container_id="target")

    async def query(self, migration_id: str) -> pb.Outcome:
        return pb.Outcome(migration_id=migration_id, state=OutcomeState(type(self).outcome_state).wire,
                          container_id="target")


@pytest.fixture
def fake_link() -> type[FakeLink]:
    class Link(FakeLink):
        pass

    return Link


def links_of(link: type[FakeLink]) -> LinkFactory:
    """The context's seam: every link the migration (or its settling) opens is a new `link`."""
    @contextlib.asynccontextmanager
    async def open_link(_device: DeviceSettings) -> AsyncIterator[TargetLink]:
        link.opened += 1
        if link.fail_at == "open":
            raise TransportError("device unreachable")
        yield link()  # type: ignore[misc]

    return open_link


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    journal = await Journal.open(tmp_path / "journal.sqlite3")
    yield journal
    await journal.close()


def context(tmp_path: Path, journal: Journal, engine: FakeEngine, link: type[FakeLink]) -> Context:
    (tmp_path / "id").write_text("")
    (tmp_path / "known_hosts").write_text("")
    device = DeviceSettings("pixel", address=Address("127.0.0.1", 9), identity=tmp_path / "id",
                            known_hosts=tmp_path / "known_hosts")
    settings = Settings(daemon=DaemonSettings(state_dir=tmp_path / "state"), docker=DockerSettings(checkpoint="engine"),
                        devices={"pixel": device}, timeouts=TimeoutSettings(settle=2.0))
    def source(record: MigrationRecord) -> HostSource:
        return HostSource(engine, settings.docker, record, 5.0, machine=lambda: MACHINE)  # type: ignore[arg-type]

    return Context(settings, journal, links=links_of(link), sources=source)


async def migrate(ctx: Context) -> MigrationRecord:
    record = new_record(CID, "web", "pixel", "api", False)
    await ctx.journal.create(record)
    return await Migration(ctx, record).run()


async def states(journal: Journal, record: MigrationRecord) -> list[str]:
    return [s for s, _at, _d in await journal.transitions(record.id)]


async def test_a_bug_in_preflight_fails_the_migration_not_the_caller(tmp_path: Path, journal: Journal,
                                                                     fake_link: type[FakeLink]) -> None:
    engine = FakeEngine(tmp_path, inspect_error=KeyError("State"))
    record = await migrate(context(tmp_path, journal, engine, fake_link))  # returns: nothing escapes
    assert record.state == S.FAILED
    assert "internal error in preflight: KeyError" in record.error
    assert engine.started_from == [] and engine.running


async def test_an_engine_error_in_preflight_is_a_refusal(tmp_path: Path, journal: Journal,
                                                         fake_link: type[FakeLink]) -> None:
    engine = FakeEngine(tmp_path, inspect_error=EngineError("no such container", 404))
    record = await migrate(context(tmp_path, journal, engine, fake_link))
    assert record.state == S.REJECTED and "cannot inspect" in record.error


async def test_stats_answering_null_does_not_stop_the_migration(tmp_path: Path, journal: Journal,
                                                                fake_link: type[FakeLink]) -> None:
    engine = FakeEngine(tmp_path, stats=None)
    record = await migrate(context(tmp_path, journal, engine, fake_link))
    assert record.state == S.DONE, record.error


async def test_a_bug_after_the_freeze_rolls_back(tmp_path: Path, journal: Journal,
                                                 fake_link: type[FakeLink]) -> None:
    fake_link.fail_at = "send_files"
    engine = FakeEngine(tmp_path)
    record = await migrate(context(tmp_path, journal, engine, fake_link))
    assert record.state == S.ROLLED_BACK
    assert engine.started_from == [record.checkpoint_name] and engine.running
    assert await states(journal, record) == ["requested", "preflight", "checkpointing", "streaming",
                                             "rolling-back", "rolled-back"]


@pytest.mark.parametrize(("says", "expected"), [("running", S.DONE), ("failed", S.ROLLED_BACK),
                                                ("aborted", S.ROLLED_BACK), ("unknown", S.ROLLED_BACK)])
async def test_a_broken_commit_asks_the_device(tmp_path: Path, journal: Journal, fake_link: type[FakeLink],
                                               says: str, expected: MigrationState) -> None:
    fake_link.fail_at, fake_link.failure = "commit", TransportError("link to the agent broke")
    fake_link.outcome_state = says
    engine = FakeEngine(tmp_path)
    record = await migrate(context(tmp_path, journal, engine, fake_link))
    assert record.state == expected
    assert fake_link.opened == 2  # the migration's connection, then one to ask
    assert engine.running == (expected == S.ROLLED_BACK)


async def test_without_an_answer_it_stays_unresolved_until_the_device_answers(
        tmp_path: Path, journal: Journal, fake_link: type[FakeLink]) -> None:
    fake_link.fail_at, fake_link.failure = "commit", TransportError("link to the agent broke")
    fake_link.outcome_state = "restoring"  # busy for longer than the settle deadline
    engine = FakeEngine(tmp_path)
    ctx = context(tmp_path, journal, engine, fake_link)
    record = await migrate(ctx)
    assert record.state == S.RESTORING and "could not say" in record.error
    assert engine.started_from == [], "restored at the source on a guess"
    assert [r.id for r in await journal.unfinished()] == [record.id]
    fake_link.fail_at = "open"  # now unreachable: still unresolved
    assert await resolve(ctx, record) is False and record.state == S.RESTORING
    fake_link.fail_at, fake_link.outcome_state = "", "running"
    assert await resolve(ctx, record) is True
    settled = await journal.get(record.id)
    assert settled is not None and settled.state == S.DONE and not engine.running
    assert await journal.unfinished() == []


async def test_cancelled_mid_stream_rolls_back_then_propagates(tmp_path: Path, journal: Journal,
                                                               fake_link: type[FakeLink]) -> None:
    fake_link.hang = True
    engine = FakeEngine(tmp_path)
    ctx = context(tmp_path, journal, engine, fake_link)
    streaming = asyncio.Event()

    async def on_change(record: MigrationRecord) -> None:
        if record.state == S.STREAMING:
            streaming.set()

    ctx.on_change = on_change
    record = new_record(CID, "web", "pixel", "api", False)
    await journal.create(record)
    task = asyncio.create_task(Migration(ctx, record).run())
    async with asyncio.timeout(10):
        await streaming.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert record.state == S.ROLLED_BACK and engine.running


async def test_drain_waits_for_an_admission_in_progress(tmp_path: Path, journal: Journal,
                                                        fake_link: type[FakeLink]) -> None:
    entered, gate = asyncio.Event(), asyncio.Event()

    class SlowJournal(Journal):
        async def last_for_container(self, container_id: str) -> MigrationRecord | None:
            entered.set()
            await gate.wait()
            return await super().last_for_container(container_id)

    slow = SlowJournal(journal.path)
    slow._sqlite = journal._sqlite
    slow._run = journal._run
    engine = FakeEngine(tmp_path)
    spawned: list[asyncio.Task[None]] = []

    def spawn(coro: Any, name: str = "") -> asyncio.Task[None]:
        spawned.append(asyncio.create_task(coro, name=name))
        return spawned[-1]

    scheduler = Scheduler(context(tmp_path, slow, engine, fake_link), slow, 2, spawn)
    submitting = asyncio.create_task(scheduler.submit(MigrationRequest(CID, "web", "pixel", origin="api")))
    await entered.wait()
    draining = asyncio.create_task(scheduler.drain())
    await asyncio.sleep(0.05)
    assert not draining.done(), "drain returned while a submission was being admitted"
    gate.set()
    with pytest.raises(NotAccepting):
        await submitting  # the daemon began shutting down meanwhile: not started
    async with asyncio.timeout(5):
        await draining
    assert spawned == [] and await journal.recent() == []


async def test_one_migration_per_container_and_none_after_an_unresolved_one(
        tmp_path: Path, journal: Journal, fake_link: type[FakeLink]) -> None:
    engine = FakeEngine(tmp_path)
    ctx = context(tmp_path, journal, engine, fake_link)
    unresolved = new_record(CID, "web", "pixel", "api", False)
    await journal.create(unresolved)
    for state in (S.PREFLIGHT, S.CHECKPOINTING, S.STREAMING, S.RESTORING):
        unresolved.state = state
        await journal.save(unresolved)
    scheduler = Scheduler(ctx, journal, 2, asyncio.create_task)
    with pytest.raises(AlreadyMigrating, match="waiting for its device"):
        await scheduler.submit(MigrationRequest(CID, "web", "pixel", origin="api"))
    assert scheduler.active == {}
