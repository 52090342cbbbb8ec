"""The whole test bed: engine A (host), the device namespace with engine B, adbd and sshd, the adb server.

``up()`` is idempotent: what already runs is reused, and what this bed started is recorded in
``state.json`` so that ``down()`` stops exactly that (by pid) and nothing else.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from androcond.agent.device import RUNTIME_NAME, runtime_path
from androcond.criu.compat import PAGE_SERVER_PIPE

from .device import ADBD_PORT, SSHD_PORT, AdbServer, DeviceNamespace, stop_recorded
from .engines import DockerEngine
from .images import TEST_IMAGE, build_programs, import_test_image, rootfs_tar
from .proc import TestBedError, run
from .system import require

RUN_ROOT = Path(os.environ.get("ANDROCOND_TESTBED_RUN", "/run/androcond-testbed"))
DATA_ROOT = Path(os.environ.get("ANDROCOND_TESTBED_DATA", "/var/lib/androcond-testbed"))
TEST_LABEL = "androcond-testbed"
# Containers a test run makes carry TEST_LABEL=TEST_RUN, so a run removes its own and never another's.
TEST_RUN = os.environ.get("ANDROCOND_TEST_RUN") or uuid.uuid4().hex[:8]
RUN_FILTER = f"{TEST_LABEL}={TEST_RUN}"
PIPE_MAX_SIZE = Path("/proc/sys/fs/pipe-max-size")
# What the x86_64 bed runs (scripts/system-packages.txt names what each provides).
BED_PACKAGES = ("docker.io", "containerd", "runc", "openssh-server", "iproute2", "util-linux", "busybox-static",
                "gcc", "libc6-dev", "adb", "adbd")


@dataclass
class TestBed:
    __test__ = False  # not a pytest class

    run_root: Path = RUN_ROOT
    data_root: Path = DATA_ROOT
    engine_a: DockerEngine = field(init=False)
    engine_b: DockerEngine = field(init=False)
    device: DeviceNamespace = field(init=False)
    adb: AdbServer = field(init=False)
    started: dict[str, Any] = field(default_factory=dict)
    started_now: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # The host's engine has androcond's runtime too: the way back restores in place (target/host.py).
        self.engine_a = DockerEngine("a", self.data_root / "engine-a", self.run_root / "engine-a",
                                     runtimes={RUNTIME_NAME: str(runtime_path())})
        self.device = DeviceNamespace(netns="androcond-dev0", host_if="acd0-host", device_if="acd0-dev",
                                      host_ip="10.231.7.1", device_ip="10.231.7.2",
                                      run_dir=self.run_root / "device")
        self.engine_b = DockerEngine("b", self.data_root / "engine-b", self.run_root / "engine-b",
                                     netns=self.device.netns, runtimes={RUNTIME_NAME: str(runtime_path())})
        self.adb = AdbServer(self.run_root)

    @property
    def state_file(self) -> Path:
        return self.run_root / "state.json"

    @property
    def adb_serial(self) -> str:
        return f"{self.device.device_ip}:{ADBD_PORT}"

    @property
    def sshd_port(self) -> int:
        return SSHD_PORT

    def _load_state(self) -> None:
        try:
            self.started = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            self.started = {}

    def _save_state(self) -> None:
        self.run_root.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.started, indent=2))

    def _record(self, key: str, value: Any) -> None:
        if value:
            self.started[key] = value
            self.started_now.add(key)
            self._save_state()

    def check_prerequisites(self) -> None:
        if os.geteuid() != 0:
            raise TestBedError("the test bed needs root (network namespaces, dockerd, CRIU)")
        require(BED_PACKAGES)
        if not Path("/usr/local/sbin/criu").exists():
            raise TestBedError("missing /usr/local/sbin/criu (CRIU 4.2): run scripts/install-system.sh first")
        check = run(["/usr/local/sbin/criu", "check"], check=False)
        if check.returncode != 0:
            raise TestBedError(f"criu check failed: {check.stderr.decode(errors='replace')[-500:]}")

    def up(self) -> TestBed:
        self.check_prerequisites()
        self._load_state()
        # Recorded before starting, so that a start that fails half-way is still cleaned up by down().
        if not self.engine_a.answers():
            self._record("engine_a", True)
            self.engine_a.start()
        else:
            self.engine_a.reconfigure()
        self._record("netns", self.device.create())
        if not self.engine_b.answers():
            self._record("engine_b", True)
            self.engine_b.start()
        else:
            self.engine_b.reconfigure()
        self._record("adbd_pid", self.device.start_adbd())
        self._record("sshd_pid", self.device.start_sshd())
        self._record("adb_server", self.adb.start())
        # Post-copy's page server needs 4 MiB pipes, which a host without CAP_SYS_RESOURCE (this sandbox) only
        # gets with the limit raised; down() puts the old one back.
        self._record("pipe_max_size", self._raise_pipe_max_size())
        self.adb.connect(self.adb_serial)
        programs = build_programs(self.run_root / "programs")
        tar_bytes = rootfs_tar(programs)
        for engine in (self.engine_a, self.engine_b):
            import_test_image(engine, tar_bytes)
        return self

    def down(self, *, only: set[str] | None = None, everything: bool = False) -> None:
        """Stop what the bed started: the parts named in ``only`` (what one ``up()`` started), else every part
        recorded in the state file; with ``everything``, all its parts whoever started them."""
        self._load_state()
        if only is not None:
            self.started = {k: v for k, v in self.started.items() if k in only}
        for engine in (self.engine_a, self.engine_b):
            if engine.answers():
                engine.remove_containers(TEST_LABEL)
        if self.started.get("adb_server") or everything:
            self.adb.disconnect(self.adb_serial)
            self.adb.stop()
        else:
            self.adb.disconnect(self.adb_serial)
        if self.started.get("pipe_max_size"):
            PIPE_MAX_SIZE.write_text(str(self.started["pipe_max_size"]))
        stop_recorded(self.started.get("sshd_pid"), "sshd")
        stop_recorded(self.started.get("adbd_pid"), "adbd")
        if self.started.get("engine_b") or everything:
            self.engine_b.stop()
        if self.started.get("netns") or everything:
            self.device.delete()
        if self.started.get("engine_a") or everything:
            self.engine_a.stop()
        self._load_state()
        remaining = {} if only is None else {k: v for k, v in self.started.items() if k not in only}
        self.started = remaining
        if remaining:
            self._save_state()
        else:
            self.state_file.unlink(missing_ok=True)

    def _raise_pipe_max_size(self) -> int:
        """The limit before, when it was raised now (0: it was high enough, or raised by an earlier up())."""
        if "pipe_max_size" in self.started:
            return 0
        before = int(PIPE_MAX_SIZE.read_text())
        if before >= PAGE_SERVER_PIPE:
            return 0
        PIPE_MAX_SIZE.write_text(str(PAGE_SERVER_PIPE))
        return before

    def status(self) -> dict[str, Any]:
        return {
            "engine_a": self.engine_a.answers(),
            "engine_b": self.engine_b.answers(),
            "device_netns": self.device.exists(),
            "adb_server": self.adb.answers(),
            "test_image": TEST_IMAGE,
            "started_by_bed": self.started,
        }
