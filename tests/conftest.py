"""Session fixtures: the real test bed, brought up once, torn down at the end (only what it started)."""

from __future__ import annotations

import os
import shutil
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


# containerd never removes its copy of a checkpoint it restored (androcond/criu/leftovers.py): what a bed test
# leaves there is named at the end of the session (by test, and whose: androcond's marked ones or not), and
# removed, so that one test's leftover is not the next one's.
_EXTRACTIONS_LEFT: list[tuple[str, list[str]]] = []


@pytest.fixture(autouse=True)
def _extractions_left(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("testbed") is None:
        yield
        return
    before = extractions()
    yield
    left = sorted(extractions() - before)
    if left:
        _EXTRACTIONS_LEFT.append((request.node.nodeid, [f"{p.name} ({_whose(p)})" for p in left]))
        for path in left:
            shutil.rmtree(path, ignore_errors=True)


def _whose(extracted: Path) -> str:
    try:
        return f"androcond nonce {(extracted / NONCE_FILE).read_text()[:40]}"
    except OSError:
        return "no androcond nonce"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _EXTRACTIONS_LEFT:
        terminalreporter.section("containerd's checkpoint extractions the tests left (removed)")
        for nodeid, left in _EXTRACTIONS_LEFT:
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
