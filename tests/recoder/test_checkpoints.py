"""Real `docker checkpoint`s on engine A: they round-trip byte for byte, the Android profile removes exactly
what it names, and a container running the Popcorn stand-in goes through preflight, notify, checkpoint and
recode to aarch64."""

from __future__ import annotations

import asyncio
import json
import platform
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from androcond.cli.main import main
from androcond.criu.compat import task_tree
from androcond.engine import Engine
from androcond.images import Pagemap, image_files, pb, read_image, roundtrip_dir, write_image
from androcond.popcorn.notify import notify
from androcond.recoder import DEFAULT_DROPPED_MOUNTS, RecodeOptions, VdsoTemplate, preflight_processes, recode

from ..helpers import counter_config, wait_for_count
from ..images.test_real_dump import crit, num
from ..testbed import TestBed
from ..testbed.bed import TEST_LABEL, TEST_RUN
from .conftest import STANDIN, STANDIN_PC, STANDIN_X, Builds

pytestmark = pytest.mark.testbed


async def checkpoint(testbed: TestBed, engine: Engine, container: str, dest: Path) -> Path:
    """Checkpoint (the container stops) and copy the images out of the engine's directory."""
    await engine.create_checkpoint(container, "cp")
    shutil.copytree(testbed.engine_a.data_root / "containers" / container / "checkpoints" / "cp", dest)
    return dest


async def run(engine: Engine, image: str, *cmd: str) -> str:
    labels = {TEST_LABEL: TEST_RUN}  # removed after the test by the engine_a fixture, this run's only
    container = await engine.create_container({"Image": image, "Cmd": list(cmd), "Labels": labels})
    await engine.start_container(container)
    return container


async def poll(condition: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    """A readiness check: poll until `condition` holds."""
    async with asyncio.timeout(timeout):
        while True:
            if await condition():
                return
            await asyncio.sleep(0.05)


async def wait_for_log(engine: Engine, container: str, text: str) -> None:
    async def logged() -> bool:
        return text in await engine.container_logs(container)

    await poll(logged)


@pytest.fixture
async def busybox_checkpoint(testbed: TestBed, engine_a: Engine, tmp_path: Path) -> Path:
    container = await engine_a.create_container(counter_config())
    await engine_a.start_container(container)
    await wait_for_count(engine_a, container, at_least=3)
    return await checkpoint(testbed, engine_a, container, tmp_path / "busybox")


async def test_busybox_checkpoint_round_trips(busybox_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = roundtrip_dir(busybox_checkpoint)
    assert {"inventory.img", "pages-1.img", "mountpoints-13.img"} & set(result)
    assert {name: diff for name, diff in result.items() if diff is not None} == {}
    assert main(["images", "roundtrip", str(busybox_checkpoint)]) == 0
    assert f"{len(result)} of {len(result)} files identical" in capsys.readouterr().out


async def test_multi_process_container_round_trips(testbed: TestBed, engine_a: Engine, recoder_image: str,
                                                   tmp_path: Path) -> None:
    container = await run(engine_a, recoder_image, "/bin/family", "/tmp")
    await wait_for_log(engine_a, container, "ready")
    images = await checkpoint(testbed, engine_a, container, tmp_path / "family")
    tasks = [e.get(pb.pstree_entry) for e in read_image(images / "pstree.img").entries]
    assert len(tasks) == 2
    files = [e.get(pb.file_entry) for e in read_image(images / "files.img").entries]
    kinds = {f.type for f in files}
    assert {1, 2, 5} <= kinds, "regular file, pipe and unix socket in the checkpoint"
    assert any(f.reg.name == "/tmp/state" for f in files)
    (pipe,) = read_image(images / "pipes-data.img").entries
    assert pipe.extra == b"data in the pipe"
    queued = {e.extra for e in read_image(images / "sk-queues.img").entries}
    assert queued == {b"from the child", b"from the parent"}
    assert {name: diff for name, diff in roundtrip_dir(images).items() if diff is not None} == {}


def _strip(decoded: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    core = decoded["entries"][0]
    for key in keys:
        core["thread_core"].pop(key, None)
    core["thread_core"].get("creds", {}).pop("lsm_profile", None)
    return decoded


async def test_android_profile_removes_exactly_what_it_names(busybox_checkpoint: Path, tmp_path: Path) -> None:
    src = busybox_checkpoint
    (mounts,) = [p.name for p in image_files(src) if p.name.startswith("mountpoints-")]
    # This host has no AppArmor, so Docker dumps no LSM profile: put the one Docker sets on AppArmor hosts
    # into the real core image (our codec, checked below by crit) to see the profile clear it.
    core_image = read_image(src / "core-1.img")
    core_image.entries[0].get(pb.core_entry).thread_core.creds.lsm_profile = "docker-default"
    write_image(src / "core-1.img", core_image)
    assert crit(src / "core-1.img")["entries"][0]["thread_core"]["creds"]["lsm_profile"] == "docker-default"

    out = tmp_path / "android"
    assert main(["images", "recode", str(src), str(out), "--target", "x86_64", "--profile", "android"]) == 0

    before, after = crit(src / "core-1.img"), crit(out / "core-1.img")
    assert before["entries"][0]["thread_core"]["seccomp_mode"] == "filter"
    assert "seccomp_mode" not in after["entries"][0]["thread_core"]
    assert "lsm_profile" not in after["entries"][0]["thread_core"]["creds"]
    assert _strip(after, ("seccomp_mode", "seccomp_filter")) == _strip(before, ("seccomp_mode", "seccomp_filter"))

    mounts_before = crit(src / mounts)["entries"]
    mounts_after = crit(out / mounts)["entries"]
    dropped = [m for m in mounts_before if m not in mounts_after]
    assert {m["mountpoint"] for m in dropped} == {"/sys/fs/cgroup/systemd", "/sys/fs/cgroup/memory", "/proc/acpi"}
    assert set(DEFAULT_DROPPED_MOUNTS) >= {m["mountpoint"] for m in dropped}
    assert mounts_after == [m for m in mounts_before if m not in dropped], "order and every other field kept"

    for path in image_files(src):
        if path.name not in ("core-1.img", mounts):
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name


async def test_popcorn_container_recodes_to_aarch64(testbed: TestBed, engine_a: Engine, recoder_image: str,
                                                    builds: Builds, vdso: VdsoTemplate, tmp_path: Path) -> None:
    container = await run(engine_a, recoder_image, f"/bin/{STANDIN}", "/tmp/ready")
    pid = (await engine_a.inspect_container(container))["State"]["Pid"]
    async def ready() -> bool:
        return Path(f"/proc/{pid}/root/tmp/ready").exists()

    await poll(ready)
    tasks = task_tree(pid)
    preflight_processes(tasks, "x86_64", "aarch64")
    await notify(tasks, "aarch64")
    images = await checkpoint(testbed, engine_a, container, tmp_path / "popcorn")

    root = builds.root(tmp_path / "rootfs")  # the same files as in the image
    assert crit(images / "core-1.img")["entries"][0]["thread_core"]["seccomp_mode"] == "filter"
    # No Android profile: the ISA recode alone must drop Docker's x86_64 seccomp filter (on aarch64 it kills
    # the task at its first system call) and say so.
    report = recode(images, tmp_path / "out", RecodeOptions(target="aarch64", root=root, vdso=vdso))
    assert report.stages == ["Aarch64Recode"]
    assert any("seccomp filter of task(s) 1 cannot filter aarch64" in w for w in report.warnings), report.warnings
    (core,) = crit(tmp_path / "out" / "core-1.img")["entries"]
    assert core["mtype"] == "AARCH64"
    assert [num(r) for r in core["ti_aarch64"]["gpregs"]["regs"]] == list(STANDIN_X)
    assert num(core["ti_aarch64"]["gpregs"]["pc"]) == STANDIN_PC
    assert "seccomp_mode" not in core["thread_core"]
    files = crit(tmp_path / "out" / "files.img")["entries"]
    (exe,) = [f for f in files if f.get("reg", {}).get("name") == f"/bin/{STANDIN}"]
    assert exe["reg"]["size"] == builds.aarch64.stat().st_size


async def test_a_cgroup_v2_device_with_an_older_criu_gets_mounts_and_page_counts_it_can_restore(
        busybox_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the arm64 device needed of a dump from this host (cgroup v1, CRIU 4.2): no per-controller cgroup
    mounts, and page counts where CRIU 4.1 reads them. Debian's crit (CRIU 3.17, older still) is the oracle."""
    src, out = busybox_checkpoint, tmp_path / "device"
    assert main(["images", "recode", str(src), str(out), "--target", platform.machine(), "--cgroup-v2-target",
                 "--target-criu", "4.1.1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"] == ["CgroupV1Mounts", "PagemapCompat"]

    (mounts,) = [p.name for p in image_files(src) if p.name.startswith("mountpoints-")]
    before, after = crit(src / mounts)["entries"], crit(out / mounts)["entries"]
    dropped = {m["mountpoint"] for m in before if m not in after}
    assert "/sys/fs/cgroup/pids" in dropped and all(p.startswith("/sys/fs/cgroup/") for p in dropped)
    assert "/sys/fs/cgroup" in {m["mountpoint"] for m in after}, "the cgroup tmpfs itself stays"

    for pagemap in (p.name for p in image_files(src) if p.name.startswith("pagemap-")):
        ours = [run.nr_pages for run in Pagemap.load(src / pagemap).runs]
        old_reader_before = [e.get("nr_pages", 0) for e in crit(src / pagemap)["entries"][1:]]
        old_reader_after = [e.get("nr_pages", 0) for e in crit(out / pagemap)["entries"][1:]]
        assert not any(old_reader_before), "CRIU 4.2 leaves the old count at 0"
        assert old_reader_after == ours and all(ours)
        assert [r.nr_pages for r in Pagemap.load(out / pagemap).runs] == ours, "the new count is kept too"
    for path in image_files(src):
        if path.name != mounts and not path.name.startswith("pagemap-"):
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
