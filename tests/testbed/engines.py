"""A Docker engine of the test bed: its own data root, exec root, socket and containerd namespace."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .proc import TestBedError, alive, run, start_daemon, stop_pid, tail, wait_for

DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLI = "/usr/bin/docker"
# runc looks up `criu` on PATH: CRIU 4's wrapper in /usr/local/sbin must come before Debian's CRIU 3.17.
ENGINE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


@dataclass
class DockerEngine:
    name: str
    data_root: Path
    run_dir: Path
    netns: str | None = None
    # Runtimes to register besides runc (name → path): the device engine gets androcond's runc wrapper.
    runtimes: dict[str, str] | None = None

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def runc_root(self) -> Path:
        """Where runc keeps this engine's container states: <exec-root>/runtime-runc/<containerd namespace>."""
        return self.run_dir / "exec" / "runtime-runc" / f"androcond-{self.name}"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "docker.pid"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "dockerd.log"

    def api(self, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> Any:
        data = self.request(method, path, body, timeout)
        return json.loads(data) if data.strip() else None

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> bytes:
        conn = _UnixHTTPConnection(self.socket_path, timeout)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status >= 400:
            raise TestBedError(f"engine {self.name}: {method} {path}: {response.status} {data[:500]!r}")
        return data

    def answers(self) -> bool:
        try:
            return self.request("GET", "/_ping", timeout=2) == b"OK"
        except (OSError, TestBedError, http.client.HTTPException):
            return False

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> bool:
        """Start the engine unless it already answers. Return True if this call started it."""
        if self.answers():
            return False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        cmd = [DOCKERD, "--config-file", str(config), "--data-root", str(self.data_root),
               "--exec-root", str(self.run_dir / "exec"), "--pidfile", str(self.pidfile),
               "-H", self.host, "--containerd-namespace", f"androcond-{self.name}",
               "--containerd-plugins-namespace", f"androcond-{self.name}-plugins",
               # The bed never touches the host's firewall; its containers need no outside network.
               "--iptables=false", "--ip-masq=false", "--storage-driver", "overlay2"]
        if self.netns is not None:
            # `ip netns exec` remounts /sys and dockerd then misses the devices cgroup: enter the net ns only.
            cmd = ["nsenter", f"--net=/var/run/netns/{self.netns}", *cmd]
        env = dict(os.environ, PATH=ENGINE_PATH)
        pid = start_daemon(cmd, self.log_path, env)
        wait_for(self.answers, timeout=90, what=f"Docker engine {self.name} on {self.socket_path}",
                 diagnose=lambda: tail(self.log_path) if alive(pid) else f"dockerd exited:\n{tail(self.log_path)}")
        return True

    def config(self) -> dict[str, object]:
        config: dict[str, object] = {"experimental": True}
        if self.runtimes:
            config["runtimes"] = {name: {"path": path} for name, path in self.runtimes.items()}
        return config

    def write_config(self) -> Path:
        path = self.run_dir / "daemon.json"
        path.write_text(json.dumps(self.config()))
        return path

    def reconfigure(self) -> bool:
        """A running engine whose daemon.json is not ours any more (an older bed): rewrite it and have the
        engine reload it (SIGHUP reloads runtimes). True if it had to."""
        path = self.run_dir / "daemon.json"
        try:
            current = json.loads(path.read_text())
        except (OSError, ValueError):
            current = None
        if current == self.config():
            return False
        self.write_config()
        pid = self.pid()
        if pid is None:
            raise TestBedError(f"Docker engine {self.name} answers but has no pid file to reload it")
        os.kill(pid, signal.SIGHUP)
        names = set(self.runtimes or {})
        wait_for(lambda: names <= set(json.loads(self.request("GET", "/info", timeout=5)).get("Runtimes", {})),
                 timeout=30, what=f"Docker engine {self.name} to load runtimes {sorted(names)}")
        return True

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, timeout=30, what=f"dockerd {self.name}")
        self.pidfile.unlink(missing_ok=True)

    def cli(self, *args: str, input_bytes: bytes | None = None, check: bool = True) -> str:
        return run([DOCKER_CLI, "-H", self.host, *args], input_bytes=input_bytes, check=check).stdout.decode()

    def has_image(self, ref: str) -> bool:
        return run([DOCKER_CLI, "-H", self.host, "image", "inspect", ref], check=False).returncode == 0

    def has_container(self, name: str) -> bool:
        return run([DOCKER_CLI, "-H", self.host, "container", "inspect", name], check=False).returncode == 0

    def remove_containers(self, label: str) -> None:
        ids = self.cli("ps", "-aq", "--filter", f"label={label}").split()
        if ids:
            self.cli("rm", "-f", *ids)
