"""Downtime and total time of moving a running container to the device: androcond against the seeds'
sequential flow (`docker checkpoint create` → `tar czf` → `scp` → untar into engine B's checkpoint dir →
`docker start --checkpoint`), on the same test bed, in the same run, interleaved. androcond runs three ways: to
a device whose agent ignores androcond's runtime (the plain engine restore, containerd copying the images
twice), to one whose engine has it (the engine restores from the images in place), and with post-copy
(`lazy = true`: the container resumes before its memory, which CRIU's page server sends after it), from a full
dump or from a flat freeze (`freeze = "flat"`: a lazy dump, the memory served from the paused tasks).

Downtime is read from the container's own output: the gap between its last line at the source and its first
line on the device (Docker's log timestamps, one host clock), less one 100 ms tick of the counter. The counter
touches its memory once and reads it again only every CHECK_EVERY counts (a small working set): a process
that reads all of its memory at once waits for all of it, and then post-copy's downtime is its time to the last
page. "Last page" is from the freeze until the device has every page (post-copy; the others have them at the
restore).

Two workloads (`--workload`): the counter above (xorshift memory: incompressible), and an interpreter's heap
(busybox awk holding short records, which compresses as real programs' memory does; it reads its memory only
as it counts). `--link` shapes the device's link like a phone's (bench/link.py): `unshaped`, `usb2`, `wifi`.
`androcond-uncompressed` is the plain move with `compress = "none"`, as every move was before compression:
on a shaped link it is the baseline the compressed flows are held against.

Run as root:  .venv/bin/python -m bench.migration [--sizes 16,256] [--runs 5] [--link unshaped|usb2|wifi]
              [--workload counter|heap] [--flows seeds,androcond-plain,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from androcond.criu import kdat
from androcond.criu.leftovers import extractions
from bench.link import LINKS, shaped
from bench.procfs import peak_rss
from tests.testbed import TestBed
from tests.testbed.agent import DeviceAgent, daemon_config
from tests.testbed.engines import DOCKER_CLI, DockerEngine
from tests.testbed.images import TEST_IMAGE
from tests.testbed.proc import wait_for

AGENT_PORT = 8199
# flow → the daemon's device it moves to ("seeds" is the hand-made flow, no device entry)
# Where the device's restore went (the plain engine restore has no runtime to stamp it: not broken down).
STEPS = ("restore_device_s", "restore_pager_s", "restore_engine_s", "restore_runc_s", "restore_criu_s",
         "restore_answer_s")
FLOWS = {"seeds": "", "androcond-uncompressed": "raw", "androcond-plain": "plain", "androcond": "pixel",
         "androcond-lazy": "lazy", "androcond-flat": "flat", "androcond-flat-probing": "flat"}
LABELS = {"androcond-uncompressed": "androcond, restore in place, compress = none",
          "androcond-plain": "androcond, plain engine restore",
          "androcond": "androcond, engine restore in place (runtime)",
          "androcond-lazy": "androcond, post-copy (lazy = true)",
          "androcond-flat": "androcond, post-copy from a flat freeze (freeze = \"flat\")",
          "androcond-flat-probing": "the same, CRIU probing the kernel on each run (its probe not kept)"}
CHECK_EVERY = 50  # counts between two reads of the whole memory (5 s)
TICK_S = 0.1
LABEL = "androcond-bench"
FLAT = 'lazy = true\nfreeze = "flat"'
RECORDS_PER_MB = 9000  # busybox awk: about 110 MB resident for a million records
AWK = ('BEGIN {{ for (i = 0; i < {n}; i++) a[i] = "record " i " name-" i % 977 " value " i * 7; '
       'for (c = 1; ; c++) {{ print "count " c; fflush(); system("sleep 0.1") }} }}')


def workload(kind: str, mb: int) -> list[str]:
    """The image and command of a container with about mb MB of memory, printing "count N" every 100 ms."""
    if kind == "heap":
        return [TEST_IMAGE, "/bin/busybox", "awk", AWK.format(n=mb * RECORDS_PER_MB)]
    return [TEST_IMAGE, "/bin/counter", str(mb), str(CHECK_EVERY)]


def log_times(engine: DockerEngine, name: str) -> list[tuple[float, int]]:
    out = subprocess.run([DOCKER_CLI, "-H", engine.host, "logs", "-t", name], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        if text.startswith("count "):
            when = datetime.fromisoformat(stamp[:26] + "+00:00").timestamp()
            rows.append((when, int(text.split()[1])))
    return rows


def start_counter(bed: TestBed, name: str, command: list[str]) -> None:
    bed.engine_a.cli("run", "-d", "--name", name, "--label", f"{LABEL}=1", *command)
    wait_for(lambda: len(log_times(bed.engine_a, name)) >= 3, timeout=300, what=f"{name} counting")


def downtime(bed: TestBed, name: str) -> float:
    wait_for(lambda: len(log_times(bed.engine_b, name)) >= 2, timeout=120, what=f"{name} counting on the device")
    source = log_times(bed.engine_a, name) if bed.engine_a.has_container(name) else []
    device = log_times(bed.engine_b, name)
    last_source = source[-1][0] if source else None
    first_device, first_count = device[0]
    if last_source is None:
        raise RuntimeError("source logs are gone; use keep-source")
    assert source[-1][1] + 1 == first_count, "the counter did not continue"
    return first_device - last_source - TICK_S


def seeds_flow(bed: TestBed, name: str, command: list[str], work: Path, ssh_at: tuple[str, int]) -> float:
    """What people do by hand today, step after step."""
    started = time.perf_counter()
    cid = bed.engine_a.cli("inspect", "-f", "{{.Id}}", name).strip()
    bed.engine_a.cli("checkpoint", "create", name, "cp")
    source_dir = bed.engine_a.data_root / "containers" / cid / "checkpoints" / "cp"
    tarball = work / f"{name}.tgz"
    subprocess.run(["tar", "czf", str(tarball), "-C", str(source_dir), "."], check=True)
    ssh = ["-i", str(bed.device.client_key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    remote_tar = f"/tmp/{name}.tgz"
    host, port = ssh_at
    subprocess.run(["scp", "-P", str(port), *ssh, str(tarball), f"root@{host}:{remote_tar}"], check=True)
    b = f"{DOCKER_CLI} -H {bed.engine_b.host}"
    script = (f"set -e; id=$({b} create --name {name} --label {LABEL}=1 {shlex.join(command)}); "
              f"d={bed.engine_b.data_root}/containers/$id/checkpoints/cp; "
              f"mkdir -p $d; tar xzf {remote_tar} -C $d; rm {remote_tar}; {b} start --checkpoint cp $id >/dev/null")
    subprocess.run(["ssh", "-p", str(port), *ssh, f"root@{host}", script], check=True)
    total = time.perf_counter() - started
    tarball.unlink()
    return total


@contextlib.contextmanager
def criu_probe_aside(aside: bool) -> Iterator[None]:
    """With `aside`, CRIU's kernel probe that the daemon kept (criu/kdat.py) is moved away for the block, so that
    each CRIU run probes again, as before androcond kept it."""
    kept = kdat.RUN / kdat.KDAT
    moved = kdat.RUN / f"{kdat.KDAT}.bench-aside"
    if aside and kept.exists():
        kept.rename(moved)
    try:
        yield
    finally:
        if moved.exists():
            moved.rename(kept)


def androcond_flow(config: Path, name: str, device: str, *, keep_source: bool = True) -> tuple[float, dict[str, float]]:
    """`androcond migrate --wait`: its wall time and the migration's own timings (a move that did not end done
    raises, naming why)."""
    total, record = migrate_record(config, name, device, keep_source=keep_source)
    timings: dict[str, float] = record["timings"]
    return total, timings


def migrate_record(config: Path, name: str, device: str, *, keep_source: bool = True) -> tuple[float, dict[str, Any]]:
    """`androcond migrate --wait --json`: its wall time and the migration's record as it printed it."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "androcond", "migrate", name, "--to", device,
                          *(["--keep-source"] if keep_source else []), "--wait", "--json", "--config", str(config)],
                         capture_output=True, text=True, check=False)
    total = time.perf_counter() - started
    record: dict[str, Any] = json.loads(out.stdout) if out.stdout.strip() else {"error": out.stderr[-500:]}
    if record.get("state") != "done":
        raise RuntimeError(f"{name} to {device}: {record.get('state')}: {record.get('error')}")
    return total, record


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="16,256", help="touched memory of the container, MB (comma list)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--link", choices=sorted(LINKS), default="unshaped")
    parser.add_argument("--workload", choices=("counter", "heap"), default="counter")
    parser.add_argument("--flows", default=",".join(FLOWS), help="comma list of: " + ", ".join(FLOWS))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    flows = [f for f in FLOWS if f in args.flows.split(",")]
    if not flows or len(flows) != len(args.flows.split(",")):
        parser.error(f"--flows: choose among {', '.join(FLOWS)}")
    bed = TestBed().up()
    with tempfile.TemporaryDirectory() as tmp, shaped(bed, args.link, [AGENT_PORT, AGENT_PORT + 1, bed.sshd_port]) \
            as at:
        work = Path(tmp)
        agent = DeviceAgent(bed, work, AGENT_PORT)
        plain = DeviceAgent(bed, work, AGENT_PORT + 1, module=("tests.agent.faulty_agent", "no-runtime"),
                            name="agent-plain", host_key=agent.host_key_path)
        host, port = at[AGENT_PORT]
        plain_host, plain_port = at[plain.port]

        def device(name: str, settings: str) -> str:
            return f"""
[devices.{name}]
address = "{host}:{port}"
identity = "{bed.device.client_key}"
known_hosts = "{agent.known_hosts(work / f'known_hosts-{name}', host=host, port=port)}"
{settings}
"""
        config = daemon_config(agent, work, daemon=f'api = "unix:{work / "api.sock"}"\nlog_level = "warning"',
                               host=host, port=port, extra=f"""
[devices.plain]
address = "{plain_host}:{plain_port}"
identity = "{bed.device.client_key}"
known_hosts = "{agent.known_hosts(work / 'known_hosts-plain', host=plain_host, port=plain_port)}"
{device("lazy", "lazy = true")}
{device("raw", 'compress = "none"')}
{device("flat", FLAT)}
""")
        agent.start()
        plain.start()
        daemon = subprocess.Popen([sys.executable, "-m", "androcond", "run", "--config", str(config)],
                                  stderr=(work / "daemon.log").open("wb"))
        results: dict[tuple[int, str], dict[str, list[float]]] = {}
        try:
            wait_for((work / "api.sock").exists, timeout=30, what="daemon API")
            for mb in sizes:
                command = workload(args.workload, mb)
                for _ in range(args.runs):
                    for flow in flows:  # interleaved: drift hits them all alike
                        name = f"bench-{flow}-{mb}-{uuid.uuid4().hex[:6]}"
                        start_counter(bed, name, command)
                        row = results.setdefault((mb, flow), {})
                        if flow == "seeds":
                            before = extractions()
                            row.setdefault("total", []).append(seeds_flow(bed, name, command, work,
                                                                          at[bed.sshd_port]))
                            # containerd never removes its extraction of the checkpoint (the seeds' flow
                            # leaves the container's memory on the disk each time): this benchmark does.
                            for leftover in extractions() - before:
                                shutil.rmtree(leftover, ignore_errors=True)
                        else:
                            with criu_probe_aside(flow.endswith("-probing")):
                                total, timings = androcond_flow(config, name, FLOWS[flow])
                            row.setdefault("total", []).append(total)
                            for key_name in ("checkpoint_s", "stream_s", "restore_s", *STEPS):
                                row.setdefault(key_name, []).append(timings.get(key_name, 0.0))
                            # Without post-copy every page is there once the restore returns.
                            row.setdefault("last_page_s", []).append(
                                timings.get("last_page_s", timings.get("downtime_s", 0.0)))
                        row.setdefault("downtime", []).append(downtime(bed, name))
                        bed.engine_a.remove_containers(f"{LABEL}=1")
                        bed.engine_b.remove_containers(f"{LABEL}=1")
            peaks = {"daemon": peak_rss(daemon.pid), "agent": peak_rss(agent.proc.pid if agent.proc else 0)}
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            agent.stop()
            plain.stop()
            bed.engine_a.remove_containers(f"{LABEL}=1")
            bed.engine_b.remove_containers(f"{LABEL}=1")
    print_tables(args, sizes, flows, results)
    print(f"\npeak RSS over this run: daemon {peaks['daemon'] / 2**20:.0f} MiB, "
          f"agent {peaks['agent'] / 2**20:.0f} MiB (largest container: {max(sizes)} MB)")
    return 0


def print_tables(args: argparse.Namespace, sizes: list[int], flows: list[str],
                 results: dict[tuple[int, str], dict[str, list[float]]]) -> None:
    med = statistics.median
    baseline = flows[0]
    print(f"| {args.workload}, link {args.link} | flow | downtime (s) | total (s) | last page (s) | "
          f"downtime vs {baseline} | total vs {baseline} | checkpoint (runc) | transfer | restore |   "
          f"(median of {args.runs})")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mb in sizes:
        base = results[(mb, baseline)]
        for flow in flows:
            ours = results[(mb, flow)]
            label = LABELS.get(flow, "seeds' sequential flow")
            if flow == "seeds":
                print(f"| {mb} MB | {label} | {med(ours['downtime']):.2f} | {med(ours['total']):.2f} | | "
                      f"{med(ours['downtime']) / med(base['downtime']):.2f}× | "
                      f"{med(ours['total']) / med(base['total']):.2f}× | | | |")
                continue
            print(f"| {mb} MB | {label} | {med(ours['downtime']):.2f} | {med(ours['total']):.2f} | "
                  f"{med(ours['last_page_s']):.2f} | {med(ours['downtime']) / med(base['downtime']):.2f}× | "
                  f"{med(ours['total']) / med(base['total']):.2f}× | "
                  f"{med(ours['checkpoint_s']):.2f} | {med(ours['stream_s']):.2f} | {med(ours['restore_s']):.2f} |")
    broken_down = [f for f in ("androcond", "androcond-lazy", "androcond-flat", "androcond-flat-probing")
                   if f in flows]
    if not broken_down:
        return
    print(f"\n| touched memory | flow | restore (s) | of it: on the device | pager ready | engine → runtime | "
          f"runc → CRIU | CRIU | CRIU → the engine's answer |   (agent/restore_steps.py; median of {args.runs})")
    print("|---|---|---|---|---|---|---|---|---|")
    for mb in sizes:
        for flow in broken_down:
            ours = results[(mb, flow)]
            print(f"| {mb} MB | {LABELS[flow]} | {med(ours['restore_s']):.2f} | " +
                  " | ".join(f"{med(ours[step]):.3f}" for step in STEPS) + " |")


if __name__ == "__main__":
    sys.exit(main())
