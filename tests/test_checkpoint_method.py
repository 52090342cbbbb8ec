"""The method everything builds on, on the real test bed: a checkpoint taken by engine A (CRIU 4, through
the engine API), placed under engine B's container directory, restores there and the counter continues."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from androcond.criu.leftovers import extractions
from androcond.engine import Engine

from .helpers import counter_config, counts, wait_for_count
from .testbed import TestBed

pytestmark = pytest.mark.testbed


@pytest.fixture(autouse=True)
def _plain_restores() -> Iterator[None]:
    """These restores go through the engine alone: containerd's copy of each checkpoint (which it never removes)
    is removed here, as androcond removes its own."""
    before = extractions()
    yield
    for path in extractions() - before:
        shutil.rmtree(path, ignore_errors=True)


async def test_counter_continues_on_engine_b(testbed: TestBed, engine_a: Engine, engine_b: Engine) -> None:
    source = await engine_a.create_container(counter_config())
    await engine_a.start_container(source)
    await wait_for_count(engine_a, source, at_least=5)

    await engine_a.create_checkpoint(source, "cp1")

    state = (await engine_a.inspect_container(source))["State"]
    assert not state["Running"], "the checkpoint with exit must stop the source"
    before = counts(await engine_a.container_logs(source))
    images = testbed.engine_a.data_root / "containers" / source / "checkpoints" / "cp1"
    assert (images / "inventory.img").is_file() and any(images.glob("pages-*.img"))

    target = await engine_b.create_container(counter_config())
    shutil.copytree(images, testbed.engine_b.data_root / "containers" / target / "checkpoints" / "cp1")
    await engine_b.start_container(target, checkpoint="cp1")

    after = await wait_for_count(engine_b, target, at_least=before[-1] + 3)
    # Continues where it stopped: the first number on B follows the last on A (a fresh start would print 1).
    assert after[0] == before[-1] + 1, (before[-3:], after[:3])
    assert (await engine_b.inspect_container(target))["State"]["Running"]


async def test_restore_at_source_after_checkpoint(testbed: TestBed, engine_a: Engine) -> None:
    """The rollback path: the same checkpoint restores on the source engine itself."""
    source = await engine_a.create_container(counter_config())
    await engine_a.start_container(source)
    await wait_for_count(engine_a, source, at_least=3)
    await engine_a.create_checkpoint(source, "cp1")
    before = counts(await engine_a.container_logs(source))

    await engine_a.start_container(source, checkpoint="cp1")

    after = await wait_for_count(engine_a, source, at_least=before[-1] + 2)
    assert after[len(before)] == before[-1] + 1, "restored at the source, the counter continues"
