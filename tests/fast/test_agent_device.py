"""The agent never leaves a container it made behind when preparing it fails (no test bed: a stand-in
engine records the calls)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from androcond.agent.device import (
    CRIU_CONFIG_ANNOTATION,
    DeviceEngine,
    DeviceFacts,
    criu_log_errors,
    write_restore_config,
)
from androcond.agent.errors import RestoreError
from androcond.engine import Engine


class RecordingEngine(Engine):
    """Answers like an overlay2 engine; `create_started` is set once a create is under way."""

    def __init__(self, upper: Path, hold_create: bool = False) -> None:
        super().__init__("unix:///nonexistent.sock")
        self.upper = upper
        self.hold_create = hold_create
        self.create_started = asyncio.Event()
        self.removed: list[tuple[str, bool]] = []
        self.created: list[dict[str, Any]] = []

    async def create_container(self, config: dict[str, Any], *, name: str | None = None) -> str:
        self.created.append(config)
        self.create_started.set()
        if self.hold_create:
            await asyncio.Event().wait()
        return "c0ffee"

    async def inspect_container(self, ref: str) -> dict[str, Any]:
        return {"State": {}, "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": str(self.upper)}}}

    async def remove_container(self, ref: str, *, force: bool = False) -> None:
        self.removed.append((ref, force))


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[RecordingEngine]:
    engine = RecordingEngine(tmp_path / "upper")
    yield engine
    await engine.close()


def device(engine: Engine, data_root: Path) -> DeviceEngine:
    return DeviceEngine(engine, DeviceFacts(isa="x86_64", page_size=4096, criu_version="4.1",
                                            engine_version="20.10", data_root=data_root))


async def test_a_failed_checkpoint_directory_removes_the_container(engine: RecordingEngine, tmp_path: Path) -> None:
    data_root = tmp_path / "docker"
    data_root.mkdir()
    (data_root / "containers").write_text("not a directory")  # the mkdir beneath it fails
    with pytest.raises(RestoreError, match="making the checkpoint directory"):
        await device(engine, data_root).create("target", {"Image": "x"}, "androcond")
    assert engine.removed == [("c0ffee", True)]


async def test_a_prepared_container_is_kept_when_all_went_well(engine: RecordingEngine, tmp_path: Path) -> None:
    target = await device(engine, tmp_path).create("target", {"Image": "x"}, "androcond")
    assert target.checkpoint_dir == tmp_path / "containers" / "c0ffee" / "checkpoints" / "androcond"
    assert target.checkpoint_dir.is_dir()
    assert engine.removed == []


async def test_a_create_cancelled_midway_removes_the_container_by_name(tmp_path: Path) -> None:
    engine = RecordingEngine(tmp_path / "upper", hold_create=True)
    try:
        creating = asyncio.create_task(device(engine, tmp_path).create("target", {"Image": "x"}, "androcond"))
        await engine.create_started.wait()
        creating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await creating
        assert engine.removed == [("target", True)]
    finally:
        await engine.close()


async def test_with_the_runtime_criu_gets_the_devices_options_and_leaves_cgroups_alone(
        engine: RecordingEngine, tmp_path: Path) -> None:
    data_root, spool = tmp_path / "docker", tmp_path / "spool"
    data_root.mkdir()
    spool.mkdir()
    fast = DeviceEngine(engine, DeviceFacts(isa="aarch64", page_size=4096, criu_version="4.1", engine_version="26.1",
                                            data_root=data_root, runtime="androcond"), spool)
    body = {"Image": "x", "HostConfig": {"Memory": 1 << 27, "Annotations": {"mine": "kept"}}}
    await fast.create("target", body, "androcond", "m1")
    (created,) = engine.created
    host = created["HostConfig"]
    assert host["Runtime"] == "androcond" and host["Memory"] == 1 << 27
    assert host["Annotations"]["mine"] == "kept"
    conf = Path(host["Annotations"][CRIU_CONFIG_ANNOTATION])
    assert conf.parent == spool
    lines = [line for line in conf.read_text().splitlines() if not line.startswith("#")]
    assert lines[-1] == "manage-cgroups=ignore"


def test_the_restore_config_keeps_the_devices_own_options(tmp_path: Path) -> None:
    runc_conf = tmp_path / "runc.conf"
    runc_conf.write_text("tcp-close\n")
    text = write_restore_config(tmp_path, runc_conf).read_text()
    assert [line for line in text.splitlines() if not line.startswith("#")] == ["tcp-close", "manage-cgroups=ignore"]
    runc_conf.unlink()
    text = write_restore_config(tmp_path, runc_conf).read_text()
    assert "tcp-close" not in text, "rewritten from the device's current file"


def test_a_refused_restore_names_crius_first_errors_and_keeps_its_log(tmp_path: Path) -> None:
    log = tmp_path / "images" / "m1" / "restore.log"
    log.parent.mkdir(parents=True)
    log.write_text("(00.1) Version: 4.1.1\n(00.2) Error (criu/files-reg.c:2133): File app/twoisa has bad size\n"
                   "(00.3) Error (criu/cr-restore.c:2320): Restoring FAILED.\n(00.4) Error (criu/mount.c:1): busy\n")
    message = f"OCI runtime restore failed: criu failed: type RESTORE errno 0\nlog file: {log}: unknown"
    kept = tmp_path / "failed-restores"
    why = criu_log_errors(message, kept, lines=2)
    assert why.startswith(" (CRIU: (00.2) Error (criu/files-reg.c:2133): File app/twoisa has bad size | (00.3)")
    assert "busy" not in why
    (copy,) = kept.glob("*-m1-restore.log")
    assert f"(log kept: {copy})" in why and copy.read_text() == log.read_text()
    assert criu_log_errors("criu failed: no log named", kept) == ""
    log.unlink()
    assert criu_log_errors(message, kept) == "", "a log already gone adds nothing"


def test_concurrent_creates_each_write_the_restore_config_whole(tmp_path: Path) -> None:
    """Migrations create their containers at once: every writer ends with the whole file in place."""
    runc_conf = tmp_path / "runc.conf"
    runc_conf.write_text("tcp-close\n")
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: write_restore_config(tmp_path, runc_conf), range(64)))
    assert set(paths) == {tmp_path / "criu-restore.conf"}
    assert paths[0].read_text().endswith("tcp-close\nmanage-cgroups=ignore\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["criu-restore.conf", "runc.conf"], "no temporaries left"


async def test_settling_after_the_agent_died_removes_what_the_migration_spooled(engine: RecordingEngine,
                                                                               tmp_path: Path) -> None:
    """Its spooled images, or the restorer's directory of a move home from emulation: nothing else of the spool."""
    spool = tmp_path / "spool"
    device = DeviceEngine(engine, DeviceFacts(isa="x86_64", page_size=4096, criu_version="4.1",
                                              engine_version="26.1", data_root=tmp_path), spool)
    for kind in ("images", "emulated"):
        (spool / kind / "m1").mkdir(parents=True)
        (spool / kind / "m1" / "pages-1.img").write_bytes(b"\0" * 4096)
        (spool / kind / "m2").mkdir()
    assert await device.remove_spooled("m1")
    assert sorted(str(p.relative_to(spool)) for p in spool.glob("*/*")) == ["emulated/m2", "images/m2"]
    assert not await device.remove_spooled("m1")
