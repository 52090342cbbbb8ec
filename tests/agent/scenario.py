"""A real source for the agent tests: a container on engine A that writes a file, deletes an image file,
counts, and is checkpointed through the engine (CRIU 4)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from androcond.engine import Engine
from androcond.link.layer import checkpoint_files, tree_files
from androcond.link.payload import OutgoingFile
from androcond.protocol import protocol_pb2 as pb

from ..helpers import counter_config, counts, wait_for_count
from ..testbed import TestBed
from ..testbed.engines import DOCKER_CLI
from ..testbed.images import TEST_IMAGE
from ..testbed.proc import run

SCRIPT = "echo written-before > /data/note && rm /etc/image-file && exec /bin/counter"
CHECKPOINT = "androcond"


@dataclass
class SourceCheckpoint:
    container_id: str
    config: dict[str, Any]
    checkpoint_dir: Path
    upper_dir: Path
    last_count: int

    def files(self) -> list[OutgoingFile]:
        return checkpoint_files(self.checkpoint_dir) + tree_files(self.upper_dir, pb.ROOTFS)

    def begin(self, name: str, migration_id: str | None = None, image: str = TEST_IMAGE) -> pb.Begin:
        files = self.files()
        return pb.Begin(migration_id=migration_id or uuid.uuid4().hex, container_name=name, image=image,
                        create_config_json=json.dumps(self.config), checkpoint_name=CHECKPOINT,
                        total_bytes=sum(f.size for f in files), file_count=len(files))


async def checkpointed_source(bed: TestBed, engine: Engine, image: str = TEST_IMAGE) -> SourceCheckpoint:
    config = counter_config()
    config["Image"] = image
    config["Cmd"] = ["/bin/sh", "-c", SCRIPT]
    cid = await engine.create_container(config)
    await engine.start_container(cid)
    await wait_for_count(engine, cid, at_least=3)
    upper = Path((await engine.inspect_container(cid))["GraphDriver"]["Data"]["UpperDir"])
    await engine.create_checkpoint(cid, CHECKPOINT)
    last = counts(await engine.container_logs(cid))[-1]
    return SourceCheckpoint(cid, config, bed.engine_a.data_root / "containers" / cid / "checkpoints" / CHECKPOINT,
                            upper, last)


async def assert_running_on_device(bed: TestBed, engine_b: Engine, container_id: str, last_count: int) -> None:
    after = await wait_for_count(engine_b, container_id, at_least=last_count + 2)
    assert after[0] == last_count + 1, f"counter restarted or skipped: {after[:3]} after {last_count}"
    assert bed.engine_b.cli("exec", container_id, "cat", "/data/note").strip() == "written-before"
    deleted = run([DOCKER_CLI, "-H", bed.engine_b.host, "exec", container_id, "test", "-e", "/etc/image-file"],
                  check=False)
    assert deleted.returncode == 1, "the file deleted at the source is back"
