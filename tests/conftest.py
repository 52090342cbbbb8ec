"""Session fixtures: the real test bed, brought up once, torn down at the end (only what it started)."""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from androcond.criu.leftovers import NONCE_FILE, extractions
from androcond.engine import Engine

from .testbed import TestBed
from .testbed.bed import RUN_FILTER
from .testbed.proc import TestBedError
from .tiers import classify, unavailable

# In CI the property tests run a fixed, reproducible sample (a red CI must be reproducible); locally they
# explore new inputs on every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    classify(items)


def pytest_configure(config: pytest.Config) -> None:
    # Started in the background by a shell without job control, the tests inherit SIGINT ignored, and so would
    # the CLIs they run: the tests of Ctrl-C need it delivered, as from a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# containerd never removes its copy of a checkpoint it restored (androcond/criu/leftovers.py), and a process killed
# mid-step can leave androcond's own temporary directories in /tmp (androcond-*): what a bed test leaves of either
# is named at the end of the session (by test, and whose) and removed, so that one test's leftover is not the next
# one's. A mount point (a root mounted for a recode) is named, never removed.
_LEFT: list[tuple[str, list[str]]] = []
TMP = Path("/tmp")


def _leftovers() -> set[Path]:
    return extractions() | set(TMP.glob("androcond-*"))


@pytest.fixture(autouse=True)
def _leftovers_of_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("testbed") is None:
        yield
        return
    before = _leftovers()
    yield
    left = sorted(_leftovers() - before)
    if left:
        _LEFT.append((request.node.nodeid, [f"{p.name} ({_whose(p)})" for p in left]))
        for path in left:
            if os.path.ismount(path):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _whose(left: Path) -> str:
    if not left.name.startswith("ctrd-checkpoint"):
        if os.path.ismount(left) or not left.is_dir():
            return "mounted" if os.path.ismount(left) else "a file"
        return "holding " + (", ".join(sorted(p.name for p in left.iterdir())[:4]) or "nothing")
    try:
        return f"androcond nonce {(left / NONCE_FILE).read_text()[:40]}"
    except OSError:
        return "no androcond nonce"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _LEFT:
        terminalreporter.section("what the tests left in /tmp: containerd's checkpoint extractions, androcond's "
                                 "temporary directories (removed)")
        for nodeid, left in _LEFT:
            terminalreporter.write_line(f"{nodeid}: {', '.join(left)}")


@pytest.fixture(scope="session")
def testbed() -> Iterator[TestBed]:
    bed = TestBed()
    if os.geteuid() != 0:
        unavailable("the test bed needs root (network namespaces, dockerd, CRIU): run scripts/test.sh as root")
    try:
        bed.up()
    except TestBedError as exc:
        bed.down(only=bed.started_now)
        unavailable(f"the test bed did not come up: {exc} (scripts/setup.sh prepares a machine)")
    except BaseException:
        bed.down(only=bed.started_now)
        raise
    try:
        yield bed
    finally:
        # Only what this session started: a bed brought up by hand (scripts/testbed up) stays up.
        bed.down(only=bed.started_now)


@pytest.fixture
async def engine_a(testbed: TestBed) -> AsyncIterator[Engine]:
    async with Engine(testbed.engine_a.host) as engine:
        yield engine
    testbed.engine_a.remove_containers(RUN_FILTER)


@pytest.fixture
async def engine_b(testbed: TestBed) -> AsyncIterator[Engine]:
    async with Engine(testbed.engine_b.host) as engine:
        yield engine
    testbed.engine_b.remove_containers(RUN_FILTER)


@pytest.fixture
def unique_name() -> str:
    return f"acd-test-{uuid.uuid4().hex[:8]}"
