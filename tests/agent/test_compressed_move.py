"""Compression on the wire, on the real bed: a container whose writable layer is compressible text moves with
the device's `compress` setting and lands byte-identical (the agent checks each file's digest over the
decompressed bytes, and the test compares the file's own digest on both sides); the journal's wire bytes tell
what the link carried. `compress = "none"` is the baseline: the same bytes on the wire as sent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from androcond.engine import Engine

from ..helpers import DaemonProcess, counter_config, start_counting, wait_for_count
from ..testbed.engines import DOCKER_CLI
from ..testbed.proc import run
from .conftest import AgentBed
from .daemon_bed import continuous, finished, write_daemon_config

pytestmark = pytest.mark.testbed

# About 31 MB of decimal numbers in the writable layer (text compresses several times over), then the counter.
SCRIPT = "seq 1 4000000 > /data/numbers && exec /bin/counter"


def _sha256(host: str, name: str) -> str:
    out = run([DOCKER_CLI, "-H", host, "exec", name, "sha256sum", "/data/numbers"]).stdout.decode()
    return out.split()[0]


@pytest.mark.parametrize("setting", ["zstd", "zlib", "none"])
async def test_a_compressed_move_lands_byte_identical(agent_server: AgentBed, engine_a: Engine, engine_b: Engine,
                                                      tmp_path: Path, unique_name: str, setting: str) -> None:
    bed = agent_server.bed
    config = counter_config(**{"androcond.migrate": "pixel", "androcond.keep-source": "true"})
    config["Cmd"] = ["/bin/sh", "-c", SCRIPT]
    daemon = DaemonProcess(write_daemon_config(agent_server, tmp_path, extra=f'compress = "{setting}"'))
    try:
        counted = await start_counting(engine_a, config, unique_name)
        source_digest = _sha256(bed.engine_a.host, unique_name)  # written before the first count
        await daemon.start()
        done = await finished(daemon, unique_name)
        assert done["state"] == "done", done
        after = await wait_for_count(engine_b, unique_name, at_least=counted + 2)
        assert after[0] > counted and continuous(after)
        assert _sha256(bed.engine_b.host, unique_name) == source_digest
    finally:
        await daemon.kill()
        for engine in (bed.engine_a, bed.engine_b):
            engine.cli("rm", "-f", unique_name, check=False)
    db = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
    try:
        sent, wire = db.execute("SELECT bytes_sent, wire_bytes FROM migrations WHERE container_name = ?",
                                (unique_name,)).fetchone()
    finally:
        db.close()
    assert sent > 28 << 20, sent  # the layer's numbers file (31 MB) at least
    if setting == "none":
        assert wire == sent
    else:
        # The numbers file alone shrinks several times; the counter's memory and the rest may not.
        assert wire < sent * 0.6, (setting, sent, wire)
