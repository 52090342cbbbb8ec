"""Session fixtures: the real test bed, brought up once, torn down at the end (only what it started)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings

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
