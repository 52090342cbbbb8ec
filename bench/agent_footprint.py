"""What the agent costs a device before any migration: the time to import it, the time a process that runs a
verb of `androcond agent` takes to start, and the resident memory of `androcond agent serve` listening idle.

Everything runs in the Python named by --python (a venv with androcond installed, as on a device: without the
`daemon` extra; or any other install, to compare). No root, no Docker: `agent serve` asks its engine only for
/version and /info when it starts, which a stub engine API on a unix socket in a temporary directory answers;
it listens on a free loopback port and is stopped with SIGTERM by its pid.

Run:  .venv/bin/python -m bench.agent_footprint --python /path/to/venv/bin/python [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.server
import json
import os
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The modules of the `daemon` extra and of what it brings: none of them belongs on the agent's path.
DAEMON_PACKAGES = ("elftools", "prometheus_client", "rich", "pygments", "markdown_it", "mdurl", "cloudevents",
                   "deprecation", "packaging", "dateutil", "tzdata")

IMPORT = f"""
import sys, time
started, cpu = time.perf_counter(), time.process_time()
import androcond.agent.server
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
daemon = sorted({{m.split(".")[0] for m in sys.modules}} & set({DAEMON_PACKAGES!r}))
print(seconds, cpu, rss, len(sys.modules), ",".join(daemon))
"""

# The modules a process that runs `androcond agent serve --help` has loaded when it exits.
CLI_MODULES = """
import runpy, sys
sys.argv = ["androcond", "agent", "serve", "--help"]
try:
    runpy.run_module("androcond", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(len(sys.modules))
"""

KEYS = """
import sys, asyncssh
asyncssh.generate_private_key("ssh-ed25519").write_private_key(sys.argv[1])
client = asyncssh.generate_private_key("ssh-ed25519")
open(sys.argv[2], "wb").write(client.export_public_key())
"""


class _StubEngine(http.server.BaseHTTPRequestHandler):
    """The two calls `agent serve` makes of its engine when it starts (the engine client's version probe, then info)."""

    data_root = "/nonexistent"

    def do_GET(self) -> None:
        if self.path.endswith("/version"):
            body: dict[str, object] = {"ApiVersion": "1.43", "Version": "stub"}
        elif self.path.endswith("/info"):
            body = {"DockerRootDir": self.data_root, "Runtimes": {"runc": {}}}
        else:
            self.send_error(404)
            return
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        conn, _ = super().get_request()
        return conn, ("stub", 0)  # BaseHTTPRequestHandler wants an (address, port) to log


@contextlib.contextmanager
def stub_engine(path: Path, data_root: Path) -> Iterator[None]:
    handler = type("StubEngine", (_StubEngine,), {"data_root": str(data_root)})
    server = _UnixHTTPServer(str(path), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent serve exited with {proc.returncode}")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            banner = s.recv(64)  # the ssh server's version line: asyncssh's acceptor is up
            if banner.startswith(b"SSH-"):
                return
        time.sleep(0.05)
    raise RuntimeError("agent serve did not listen in time")


def serve_rss(python: str, work: Path, settle_s: float) -> int:
    """VmRSS (KiB) of `androcond agent serve` once it listens and has been idle for settle_s."""
    port = free_port()
    spool = work / f"spool-{port}"
    config = work / f"agent-{port}.toml"
    config.write_text(f"""[daemon]
log_level = "info"
[agent]
docker_host = "unix://{work / 'engine.sock'}"
spool_dir = "{spool}"
listen = "127.0.0.1:{port}"
host_key = "{work / 'host_key'}"
authorized_keys = "{work / 'authorized_keys'}"
""")
    log = work / f"agent-{port}.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen([python, "-m", "androcond", "agent", "serve", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        try:
            wait_listening(port, proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log:\n{log.read_text(errors='replace')[-3000:]}") from exc
        time.sleep(settle_s)
        return rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Footprint:
    python: str
    runs: int
    import_s: float  # `import androcond.agent.server`, wall
    import_cpu_s: float  # and CPU
    modules: int  # in sys.modules after it
    daemon_packages_imported: list[str]
    agent_serve_help_s: float  # a whole process, wall
    agent_serve_help_cpu_s: float  # and CPU (user + system)
    agent_serve_help_modules: int
    import_rss_mib: float  # VmRSS after the import
    serve_idle_rss_mib: float  # VmRSS of `agent serve`, listening, idle


def measure(python: str, runs: int, settle_s: float, work: Path) -> Footprint:
    """Every figure for one install; `work` is the children's working directory (never a checkout, whose
    androcond would shadow the installed one)."""
    # One run first, not counted: byte-compiles anything not compiled yet and warms the page cache.
    subprocess.run([python, "-c", IMPORT], check=True, stdout=subprocess.DEVNULL)
    imports: list[float] = []
    import_cpu: list[float] = []
    import_rss: list[int] = []
    modules = 0
    daemon = ""
    starts: list[float] = []
    start_cpu: list[float] = []
    for _ in range(runs):
        out = subprocess.run([python, "-c", IMPORT], check=True, capture_output=True, text=True).stdout.split()
        imports.append(float(out[0]))
        import_cpu.append(float(out[1]))
        import_rss.append(int(out[2]))
        modules = int(out[3])
        daemon = out[4] if len(out) > 4 else ""
        wall, cpu = timed([python, "-m", "androcond", "agent", "serve", "--help"])
        starts.append(wall)
        start_cpu.append(cpu)
    cli_modules = int(subprocess.run([python, "-c", CLI_MODULES], check=True, capture_output=True,
                                     text=True).stdout.split()[-1])
    subprocess.run([python, "-c", KEYS, str(work / "host_key"), str(work / "authorized_keys")], check=True)
    os.chmod(work / "host_key", 0o600)
    (work / "data-root").mkdir(exist_ok=True)
    with stub_engine(work / "engine.sock", work / "data-root"):
        serve = [serve_rss(python, work, settle_s) for _ in range(runs)]
    med = statistics.median
    return Footprint(python=python, runs=runs, import_s=med(imports), import_cpu_s=med(import_cpu), modules=modules,
                     daemon_packages_imported=daemon.split(",") if daemon else [],
                     agent_serve_help_s=med(starts), agent_serve_help_cpu_s=med(start_cpu),
                     agent_serve_help_modules=cli_modules, import_rss_mib=med(import_rss) / 1024,
                     serve_idle_rss_mib=med(serve) / 1024)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=sys.executable, help="the Python of the install to measure")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds idle before RSS is read")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="androcond-footprint-") as tmp:
        here = os.getcwd()
        os.chdir(tmp)
        try:
            r = measure(args.python, args.runs, args.settle, Path(tmp))
        finally:
            os.chdir(here)
    if args.json:
        print(json.dumps(dataclasses.asdict(r), indent=2))
        return 0
    ms = 1000
    print(f"| what ({args.runs} runs, median) | |")
    print("|---|---|")
    print(f"| `import androcond.agent.server` | {r.import_s * ms:.0f} ms ({r.import_cpu_s * ms:.0f} ms CPU), "
          f"{r.modules} modules |")
    print(f"| daemon packages imported | {', '.join(r.daemon_packages_imported) or 'none'} |")
    print(f"| `androcond agent serve --help`, whole process | {r.agent_serve_help_s * ms:.0f} ms "
          f"({r.agent_serve_help_cpu_s * ms:.0f} ms CPU), {r.agent_serve_help_modules} modules |")
    print(f"| RSS after the import | {r.import_rss_mib:.1f} MiB |")
    print(f"| RSS of `agent serve`, listening, idle | {r.serve_idle_rss_mib:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
