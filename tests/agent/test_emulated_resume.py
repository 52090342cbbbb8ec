"""Any x86_64 container onto the arm64 device: no Popcorn binaries, the container resumes there under the
device's qemu-x86_64, rebuilt by androcond's restorer (docs/emulation.md). The programs are ordinary dynamically
linked glibc programs (tests/testbed/programs/emulated/); the device runs the very same image. What cannot move
is refused before the freeze, and a restore that fails on the device ends with the container at the source."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from androcond.engine import Engine
from androcond.protocol.emulation import MOUNT, RESTORER, STUB_MOUNT, STUB_SOCKET

from ..helpers import DaemonProcess
from ..testbed import TestBed
from ..testbed.arm64 import Arm64Device
from ..testbed.bed import TEST_LABEL, TEST_RUN
from ..testbed.device import ADB
from ..testbed.emulated import TUNABLES, install_emulated_image
from ..testbed.proc import TestBedError, wait_for
from ..testbed.twoisa import arm64_device_table
from .arm64_bed import ARM64_MARKS
from .conftest import AgentBed
from .daemon_bed import finished, running, write_daemon_config

pytestmark = ARM64_MARKS

LINE = re.compile(r"^count (\d+) role (\d) sum ([0-9a-f]{16})$")
HTTP_PORT = 18080


@pytest.fixture(scope="module")
def emulated_image(testbed: TestBed, tmp_path_factory: pytest.TempPathFactory) -> str:
    return install_emulated_image(testbed.engine_a, tmp_path_factory.mktemp("emulated"))


@pytest.fixture
def on_device(arm64_device: Arm64Device, unique_name: str) -> Iterator[str]:
    yield unique_name
    arm64_device.adb_shell(f"docker rm -f {unique_name} >/dev/null 2>&1 || true", timeout=120)


def _lines(text: str) -> list[tuple[int, int, str]]:
    return [(int(m[1]), int(m[2]), m[3]) for m in map(LINE.match, text.splitlines()) if m]


async def _move(agent: AgentBed, device: Arm64Device, engine: Engine, config: dict[str, Any], name: str,
                directory: Path, ready: Any, fault: str = "",
                keep_source: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start the container labelled for the arm64 device, wait until `ready(logs)` (what the test compares is
    seen before the daemon starts), then a daemon of its own moves it from its startup scan. With
    `keep_source` the stopped source stays, with its logs up to the freeze."""
    table = arm64_device_table(device, directory)
    daemon_config = write_daemon_config(agent, directory, extra=table + "[timeouts]\nconnect = 60\n")
    env = {**os.environ, "ANDROCOND_INJECT_FAULT": f"{fault}@{name}"} if fault else None
    daemon = DaemonProcess(daemon_config, env=env)
    try:
        labels = {TEST_LABEL: TEST_RUN, "androcond.migrate": "arm64",
                  **({"androcond.keep-source": "true"} if keep_source else {})}
        cid = await engine.create_container({**config, "Labels": labels}, name=name)
        await engine.start_container(cid)
        for _ in range(600):  # polling its logs: the program says nothing else
            if ready(await engine.container_logs(name)):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"{name} did not get ready at the source")
        await daemon.start()
        return await finished(daemon, name, timeout=400), daemon.lines
    finally:
        await daemon.kill()


def _counted(at_least: int) -> Any:
    def ready(logs: str) -> bool:
        lines = _lines(logs)
        return all(any(r == role and n >= at_least for n, r, _ in lines) for role in (0, 1))
    return ready


def _heap(image: str, *env: str) -> dict[str, Any]:
    return {"Image": image, "Cmd": ["/bin/heap"], "Env": list(env)}


async def _still_at_source(engine: Engine, name: str, device: Arm64Device) -> None:
    """Running at the source and counting on from where it was (its whole log continuous: no restart)."""
    before = _lines(await engine.container_logs(name))
    target = max(n for n, r, _ in before if r == 0) + 2
    for _ in range(600):
        if max(n for n, r, _ in _lines(await engine.container_logs(name)) if r == 0) >= target:
            break
        await asyncio.sleep(0.1)
    role0 = [n for n, r, _ in _lines(await engine.container_logs(name)) if r == 0]
    assert role0 == list(range(1, len(role0) + 1)), "the source restarted or lost lines"
    assert await running(engine, name)
    assert name not in device.adb_shell("docker ps -a --format '{{.Names}}'", timeout=120)


async def test_a_dynamic_program_with_two_threads_and_a_64_mb_heap_resumes_emulated(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str) -> None:
    end, lines = await _move(agent_server, arm64_device, engine_a, _heap(emulated_image, TUNABLES), on_device,
                             tmp_path, _counted(3), keep_source=True)
    assert end["state"] == "done", end.get("detail")
    assert not await running(engine_a, on_device)
    source = _lines(await engine_a.container_logs(on_device))
    sums = {role: {s for _, r, s in source if r == role} for role in (0, 1)}
    assert all(len(found) == 1 for found in sums.values()), sums
    last = {role: max(n for n, r, _ in source if r == role) for role in (0, 1)}
    sh = arm64_device.adb_shell

    def device_lines() -> list[tuple[int, int, str]]:
        return _lines(sh(f"docker logs {on_device} 2>&1", timeout=120))

    try:
        wait_for(lambda: all(sum(1 for _, r, _ in device_lines() if r == role) >= 2 for role in (0, 1)),
                 timeout=240, interval=2, what="both threads printing on the device")
    except TestBedError as exc:
        state = sh(f"docker inspect -f '{{{{json .State}}}}' {on_device}", timeout=120)
        logs = sh(f"docker logs {on_device} 2>&1 | tail -5", timeout=120)
        pytest.fail(f"{exc}; its state {state}; its last output: {logs}")
    after = device_lines()
    for role in (0, 1):
        counts = [n for n, r, _ in after if r == role]
        # It goes on from where it was frozen: never from 1 again, no count skipped.
        assert counts[0] in (last[role], last[role] + 1), (role, last[role], counts[:3])
        assert counts == list(range(counts[0], counts[0] + len(counts))), counts
        assert {s for _, r, s in after if r == role} == sums[role], "memory changed on the way"
    assert sh(f"docker inspect -f '{{{{.State.Running}}}} {{{{.Config.Image}}}}' {on_device}",
              timeout=120).split() == ["true", emulated_image]
    # binfmt_misc on the device runs the image's own x86_64 busybox.
    assert sh(f"docker exec {on_device} /bin/busybox uname -m", timeout=120).strip() == "x86_64"
    emulated = [e for e in lines if e.get("msg") == "configuration adjusted" and e.get("field") == "Entrypoint"]
    assert emulated and "qemu-x86_64" in emulated[0]["why"]
    # The engine's init runs the emulator there (a qemu dying as PID 1 would hang instead of ending it).
    assert any(e.get("field") == "HostConfig.Init" for e in lines if e.get("msg") == "configuration adjusted")
    assert sh(f"docker inspect -f '{{{{.HostConfig.Init}}}}' {on_device}", timeout=120).strip() == "true"
    sh(f"docker stop -t 2 {on_device} >/dev/null", timeout=120)
    assert sh(f"docker inspect -f '{{{{.State.Running}}}}' {on_device}", timeout=120).strip() == "false"


# Run in the device's own Python (the agent's package is installed there): the readout through the emulator's gdb
# stub, then a detach that lets the process run on.
READOUT = """
import asyncio, json, sys, time
from pathlib import Path
from androcond.agent.gdb_remote import GdbRemote
from androcond.agent.guest_state import host_pid, read_memory, read_out

async def main():
    began = time.monotonic()
    stub = await GdbRemote.connect(Path(sys.argv[1]))
    state = await read_out(stub)
    took = time.monotonic() - began
    program = next(m for m in state.maps if m.path == sys.argv[2] and m.offset == 0)
    qemu = host_pid(state.pid, int(sys.argv[3]))  # the stub names it as the container sees it
    with open(f"/proc/{qemu}/root{sys.argv[2]}", "rb") as f:
        same = read_memory(qemu, program, 4096) == f.read(4096)
    await stub.detach(state.pid)
    print(json.dumps({"pid": state.pid, "exe": state.exe, "seconds": took, "program_bytes_match": same,
                      "threads": [{"tid": t.tid, **{r: t.value(r) for r in ("rip", "rsp", "fs_base")}}
                                  for t in state.threads],
                      "maps": [[m.start, m.end, m.perms, m.path] for m in state.maps]}))

asyncio.run(main())
"""


def _read_out(device: Arm64Device, name: str, program: str, directory: Path) -> dict[str, Any]:
    """READOUT run on the device against the container's stub, reached as the agent does (emulated.stub_socket)."""
    script = directory / "readout.py"
    script.write_text(READOUT)
    device.adb_push(script, "/tmp/androcond-readout.py")
    init = device.adb_shell(f"docker inspect -f '{{{{.State.Pid}}}}' {name}", timeout=120).strip()
    sock = f"/proc/{init}/root{STUB_MOUNT}/{STUB_SOCKET}"
    out = device.adb_shell(f"python3 /tmp/androcond-readout.py {sock} {program} {init} 2>&1 || true", timeout=300)
    try:
        return dict(json.loads(out.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        pytest.fail(f"the readout failed: {out[-2000:]}")


async def test_the_emulated_process_can_be_read_out_through_the_stub_and_runs_on(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str) -> None:
    """The device's qemu runs with its gdb stub (the way home needs the registers only qemu holds): connecting
    stops both threads; each one's registers, the guest's own memory map and its memory (at the guest's
    addresses in /proc/<qemu>/mem) come out consistent; after the detach both threads count on."""
    end, _ = await _move(agent_server, arm64_device, engine_a, _heap(emulated_image, TUNABLES), on_device,
                         tmp_path, _counted(3))
    assert end["state"] == "done", end.get("detail")
    sh = arm64_device.adb_shell
    argv = sh(f"docker inspect -f '{{{{json .Config.Entrypoint}}}}' {on_device}", timeout=120)
    assert f'"-g","{STUB_MOUNT}/{STUB_SOCKET},suspend=n"' in argv, argv
    tmpfs = sh(f"docker inspect -f '{{{{json .HostConfig.Tmpfs}}}}' {on_device}", timeout=120)
    assert STUB_MOUNT in tmpfs, tmpfs

    def device_lines() -> list[tuple[int, int, str]]:
        return _lines(sh(f"docker logs {on_device} 2>&1", timeout=120))

    wait_for(lambda: all(sum(1 for _, r, _ in device_lines() if r == role) >= 2 for role in (0, 1)),
             timeout=240, interval=2, what="both threads printing on the device")
    state = _read_out(arm64_device, on_device, "/bin/heap", tmp_path)
    assert state["exe"] == f"{MOUNT}/{RESTORER}", "the guest qemu runs is the restorer, which became the program"
    threads = state["threads"]
    assert len(threads) == 2 and threads[0]["tid"] == state["pid"]
    maps = [(start, end_, perms, path) for start, end_, perms, path in state["maps"]]

    def mapping(address: int) -> tuple[int, int, str, str]:
        return next(m for m in maps if m[0] <= address < m[1])

    assert len({t["fs_base"] for t in threads}) == 2, "each thread has its own TLS"
    for thread in threads:
        assert mapping(thread["rip"])[2].startswith("r-x"), thread
        assert mapping(thread["rsp"])[2].startswith("rw"), thread
        assert mapping(thread["fs_base"])[2].startswith("rw"), thread
    paths = {path for *_, path in maps}
    assert "/bin/heap" in paths and any("libc" in path for path in paths), paths
    assert state["program_bytes_match"], "guest memory at its own address is not the program's bytes"
    # Let go: the same process counts on, both threads, no count lost.
    before = device_lines()
    last = {role: max(n for n, r, _ in before if r == role) for role in (0, 1)}
    wait_for(lambda: all(max(n for n, r, _ in device_lines() if r == role) >= last[role] + 3 for role in (0, 1)),
             timeout=240, interval=2, what="both threads counting on after the readout")
    for role in (0, 1):
        counts = [n for n, r, _ in device_lines() if r == role]
        assert counts == list(range(counts[0], counts[0] + len(counts))), (role, counts)
    print(f"readout took {state['seconds']:.3f} s on the emulated device")


# On the device: read the emulated process out, write the restorer's plan and its pages from it, end qemu.
def _fetch_through_adb(device: Arm64Device, port: int) -> str:
    forwarded = subprocess.run([ADB, "-s", device.adb_serial, "forward", "tcp:0", f"tcp:{port}"],
                               capture_output=True, check=True, timeout=60).stdout.decode().strip()
    try:
        curl = subprocess.run(["curl", "-sS", "--max-time", "60", f"http://127.0.0.1:{forwarded}/"],
                              capture_output=True, timeout=90, check=True)
        return curl.stdout.decode()
    finally:
        subprocess.run([ADB, "-s", device.adb_serial, "forward", "--remove", f"tcp:{forwarded}"],
                       capture_output=True, timeout=60, check=False)


async def _http_on_device(testbed: TestBed, agent: AgentBed, device: Arm64Device, engine: Engine, image: str,
                          name: str, directory: Path) -> str:
    """The http program (port 8080 published as HTTP_PORT) labelled for the arm64 device, asked twice at the
    source (hits 1 and 2), then moved there: its token."""
    config = {"Image": image, "Cmd": ["/bin/http"], "Env": [TUNABLES], "ExposedPorts": {"8080/tcp": {}},
              "HostConfig": {"PortBindings": {"8080/tcp": [{"HostPort": str(HTTP_PORT)}]}}}
    answers: list[str] = []

    def served_twice(logs: str) -> bool:
        if "serving token" not in logs:
            return False
        while len(answers) < 2:  # asked inside the container, on the source
            answers.append(testbed.engine_a.cli("exec", name, "wget", "-qO-", "http://127.0.0.1:8080/"))
        return True

    end, _ = await _move(agent, device, engine, config, name, directory, served_twice)
    assert end["state"] == "done", end.get("detail")
    token = answers[0].split()[3]
    assert answers == [f"hits 1 token {token}\n", f"hits 2 token {token}\n"]
    return token


async def test_an_http_server_keeps_serving_its_state_from_the_device(
        testbed: TestBed, arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str,
        tmp_path: Path, on_device: str) -> None:
    token = await _http_on_device(testbed, agent_server, arm64_device, engine_a, emulated_image, on_device, tmp_path)
    # From the device's published port: the same process, its memory with it.
    assert _fetch_through_adb(arm64_device, HTTP_PORT) == f"hits 3 token {token}\n"
    assert _fetch_through_adb(arm64_device, HTTP_PORT) == f"hits 4 token {token}\n"
    # Its listening socket took fd 3, where qemu had made the stub's socket: the restorer moved the stub's
    # above it, and the stub still answers through it; the server serves on after the detach.
    state = _read_out(arm64_device, on_device, "/bin/http", tmp_path)
    assert len(state["threads"]) == 1 and state["program_bytes_match"], state
    assert _fetch_through_adb(arm64_device, HTTP_PORT) == f"hits 5 token {token}\n"


async def test_two_processes_are_refused_before_the_freeze(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str) -> None:
    config = {"Image": emulated_image, "Env": [TUNABLES],
              "Cmd": ["/bin/sh", "-c", "/bin/heap & exec /bin/sleep 100000"]}
    end, lines = await _move(agent_server, arm64_device, engine_a, config, on_device, tmp_path, _counted(2))
    assert end["state"] == "rejected", end.get("detail")
    assert "process" in end["detail"] and "emulated" in end["detail"], end["detail"]
    assert not any(e.get("state") == "checkpointing" for e in lines)
    await _still_at_source(engine_a, on_device, arm64_device)


async def test_cpu_features_the_emulator_lacks_are_refused_with_the_way_to_start_it(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str) -> None:
    """Started without the tunables on a host with AVX-512, glibc chose functions qemu cannot run."""
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this host has no AVX-512: glibc chose nothing the emulator lacks")
    end, lines = await _move(agent_server, arm64_device, engine_a, _heap(emulated_image), on_device, tmp_path,
                             _counted(2))
    assert end["state"] == "rejected", end.get("detail")
    assert "AVX512F" in end["detail"] and "GLIBC_TUNABLES=glibc.cpu.hwcaps=" in end["detail"], end["detail"]
    assert not any(e.get("state") == "checkpointing" for e in lines)
    await _still_at_source(engine_a, on_device, arm64_device)


@pytest.mark.parametrize("fault", ["bad-plan", "commit"])
async def test_a_failed_emulated_restore_or_a_lost_link_rolls_back(
        arm64_device: Arm64Device, agent_server: AgentBed, engine_a: Engine, emulated_image: str, tmp_path: Path,
        on_device: str, fault: str) -> None:
    """`bad-plan`: the restorer on the device gets a plan cut short, refuses it and says why; `commit`: the
    daemon fails before it asks for the restore, and its link to the device closes."""
    end, _ = await _move(agent_server, arm64_device, engine_a, _heap(emulated_image, TUNABLES), on_device, tmp_path,
                         _counted(2), fault=fault)
    assert end["state"] == "rolled-back", end.get("detail")
    if fault == "bad-plan":
        assert "restorer" in end["detail"], end["detail"]
    await _still_at_source(engine_a, on_device, arm64_device)
