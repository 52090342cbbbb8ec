"""Benchmark: recode throughput over a 256 MB dump, and metadata decode + re-encode against crit.

    sudo .venv/bin/python -m bench.recode [--megabytes 256] [--runs 5] [--dir /dev/shm]

Needs root, CRIU 4, gcc, aarch64-linux-gnu-gcc and Debian's crit (as the test bed has). It runs the Popcorn
stand-in dirtying MEGABYTES of memory, notifies it for aarch64 and dumps it with CRIU into DIR (tmpfs by
default, so the disk does not dominate), then times, median of RUNS:

1. recode streamed (chunks written to /dev/null, as the link will consume them) against `cat` of every file
   to /dev/null (the floor the issue names); and recode into a directory against `cp` of the dump (a copy
   that also writes, the floor for that case); each for identity and for aarch64;
2. decode + re-encode of every metadata image (all but pages and tarballs): ours, `crit decode` +
   `crit encode` per file (one process each, as the seeds ran it), and pycriu in-process (crit's library
   without the interpreter start-up) for a fairer view.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from androcond.images import ImageReader, ImageWriter, image_files, is_raw_name
from androcond.images.magic import ImageKind
from androcond.popcorn.notify import notify_tasks
from androcond.recoder import RecodeOptions, VdsoTemplate, prepare, recode
from tests.recoder.build import build_standin, build_vdso_standin

CRIU = "/usr/local/sbin/criu"
CRIT = ["/usr/bin/python3", "/usr/bin/crit"]
STANDIN = "popcorn-standin"
PASSES = 20

# pycriu's own load/dump, timed inside one /usr/bin/python3 process (argv: passes, files; prints seconds
# per pass). Files are read into memory first, so only decoding and encoding are timed.
PYCRIU_TIMER = """
import io, sys, time
import pycriu
passes = int(sys.argv[1])
blobs = [open(p, "rb").read() for p in sys.argv[2:]]
start = time.perf_counter()
for _ in range(passes):
    for blob in blobs:
        out = io.BytesIO()
        pycriu.images.dump(pycriu.images.load(io.BytesIO(blob)), out)
print((time.perf_counter() - start) / passes)
"""


def median_time(runs: int, action: Callable[[], object], reset: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(runs):
        if reset is not None:
            reset()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_dump(work: Path, megabytes: int) -> tuple[Path, Path, VdsoTemplate]:
    root = work / "root"
    (root / "bin").mkdir(parents=True)
    exe = build_standin(root / "bin" / STANDIN, "x86_64")
    shutil.copy2(exe, root / "bin" / f"{STANDIN}_x86-64")
    build_standin(root / "bin" / f"{STANDIN}_aarch64", "aarch64")
    vdso = VdsoTemplate.load(build_vdso_standin(work / "vdso-standin.so"), vvar_pages=2, page_size=4096)
    ready = work / "ready"
    proc = subprocess.Popen([str(exe), str(ready), str(megabytes)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():  # the program writes it once its memory is dirtied
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"stand-in did not get ready (exit {proc.returncode})")
            time.sleep(0.05)
        notify_tasks([proc.pid], "aarch64")
        images = work / "images"
        images.mkdir()
        subprocess.run([CRIU, "dump", "-t", str(proc.pid), "-D", str(images), "-o", "../dump.log"], check=True)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return images, Path("/"), vdso  # a plain process: files.img names are host paths


def stream_to_null(images: Path, options: RecodeOptions) -> None:
    """A recode consumed as a stream, as the transport will: every chunk written to /dev/null."""
    with open(os.devnull, "wb", buffering=0) as null:
        for _, chunk in prepare(images, options).chunks():
            null.write(chunk)


def reencode_ours(paths: list[Path], passes: int = 1) -> None:
    """Decode every entry of every image (messages of our schema parsed, others kept as bytes) and
    serialize it again. Reads the files (page cache), as pycriu's timer does not."""
    for path in paths * passes:
        with path.open("rb") as f:
            reader = ImageReader(f, path.name)
            writer = ImageWriter(io.BytesIO(), reader.header)
            for entry in reader.entries():
                writer.write_entry(entry, force_encode=True)


def reencode_crit(paths: list[Path], tmp: Path) -> None:
    for path in paths:
        subprocess.run([*CRIT, "decode", "-i", str(path), "-o", str(tmp / "d.json")], check=True)
        subprocess.run([*CRIT, "encode", "-i", str(tmp / "d.json"), "-o", str(tmp / "e.img")], check=True)


def pycriu_seconds(paths: list[Path], passes: int) -> float:
    out = subprocess.run(["/usr/bin/python3", "-c", PYCRIU_TIMER, str(passes), *map(str, paths)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recode")
    parser.add_argument("--megabytes", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"), help="where the dump and outputs go")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="androcond-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        images, root, vdso = make_dump(work, args.megabytes)
        files = image_files(images)
        total = sum(p.stat().st_size for p in files)
        out = work / "out"

        def fresh() -> None:
            shutil.rmtree(out, ignore_errors=True)

        identity_opts = RecodeOptions(target="x86_64")
        aarch64_opts = RecodeOptions(target="aarch64", root=root, vdso=vdso)
        cat = median_time(args.runs, lambda: subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL,
                                                            check=True))
        stream = {name: median_time(args.runs, lambda o=opts: stream_to_null(images, o))  # type: ignore[misc]
                  for name, opts in (("identity", identity_opts), ("aarch64", aarch64_opts))}
        cp = median_time(args.runs, lambda: subprocess.run(["cp", "-r", str(images), str(out)], check=True), fresh)
        directory = {name: median_time(args.runs, lambda o=opts: recode(images, out, o), fresh)  # type: ignore[misc]
                     for name, opts in (("identity", identity_opts), ("aarch64", aarch64_opts))}

        meta = [p for p in files if not is_raw_name(p.name) and p.suffix != ".log"]
        with images.joinpath(meta[0].name).open("rb") as f:
            assert ImageReader(f, meta[0].name).header.kind is not ImageKind.RAW
        # In-process runs take milliseconds: time PASSES passes per run and report one pass.
        ours = median_time(args.runs, lambda: reencode_ours(meta, PASSES)) / PASSES
        crit = median_time(args.runs, lambda: reencode_crit(meta, work))
        pycriu = statistics.median(pycriu_seconds(meta, PASSES) for _ in range(args.runs))

    mb = total / 1e6
    throughput: dict[str, dict[str, float]] = {"cat_floor": {"seconds": cat, "MBps": mb / cat},
                                               "cp_floor": {"seconds": cp, "MBps": mb / cp}}
    for name in ("identity", "aarch64"):
        throughput[f"stream_{name}"] = {"seconds": stream[name], "MBps": mb / stream[name],
                                        "of_floor": cat / stream[name]}
        throughput[f"directory_{name}"] = {"seconds": directory[name], "MBps": mb / directory[name],
                                           "of_floor": cp / directory[name]}
    result = {
        "dump_bytes": total,
        "files": len(files),
        "metadata_images": len(meta),
        "runs": args.runs,
        "throughput": throughput,
        "metadata": {
            "ours": {"seconds": ours},
            "crit_cli": {"seconds": crit, "ours_faster": crit / ours},
            "pycriu_in_process": {"seconds": pycriu, "ours_faster": pycriu / ours},
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"dump: {total} bytes in {len(files)} files ({len(meta)} metadata images); median of {args.runs} runs\n")
    print("| recode of the dump | seconds | MB/s | of its floor |\n|---|---|---|---|")
    rows = [("`cat` of the dump to /dev/null (floor for streaming)", cat, cat),
            ("streamed, identity", stream["identity"], cat),
            ("streamed, x86_64 → aarch64", stream["aarch64"], cat),
            ("`cp -r` of the dump (floor for writing a directory)", cp, cp),
            ("into a directory, identity", directory["identity"], cp),
            ("into a directory, x86_64 → aarch64", directory["aarch64"], cp)]
    for label, seconds, floor in rows:
        print(f"| {label} | {seconds:.3f} | {mb / seconds:.0f} | {100 * floor / seconds:.0f} % |")
    print("\n| decode + re-encode of the metadata images | seconds | ours faster by |\n|---|---|---|")
    print(f"| androcond codec | {ours:.4f} | 1× |")
    print(f"| `crit decode` + `crit encode` (a process per call) | {crit:.3f} | {crit / ours:.0f}× |")
    print(f"| pycriu load + dump, in one process | {pycriu:.4f} | {pycriu / ours:.1f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
