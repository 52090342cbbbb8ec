"""`agent serve` with one fault injected through a small AgentSession subclass, for the daemon's end-to-end
fault tests. Run: python -m tests.agent.faulty_agent FAULT --config FILE

Faults:
  flip-byte        one byte of pages-1.img changes on arrival (damage in transit)
  refuse-restore   the device engine is asked to restore a checkpoint without pstree.img (CRIU refuses)
  slow-outcome     the restore happens, then the answer is held back until the connection drops
"""

from __future__ import annotations

import asyncio
import sys

from androcond.agent import protocol_pb2 as pb
from androcond.agent import server
from androcond.agent.session import AgentSession
from androcond.config import load_settings
from androcond.logging import configure_logging


class FlipByte(AgentSession):
    _target: int | None = None
    _flipped = False

    async def _file_start(self, start: pb.FileStart) -> None:
        if start.path == "pages-1.img":
            self._target = start.stream_id
        await super()._file_start(start)

    async def _file_data(self, data: pb.FileData) -> None:
        if data.stream_id == self._target and not self._flipped:
            damaged = bytearray(data.data)
            damaged[len(damaged) // 2] ^= 0x20
            data.data = bytes(damaged)
            self._flipped = True
        await super()._file_data(data)


class RefuseRestore(AgentSession):
    async def _commit(self, file_count: int = 0) -> None:
        migration = self._active()
        if migration.target is not None:
            (migration.target.checkpoint_dir / "pstree.img").unlink()
        await super()._commit(file_count)


class SlowOutcome(AgentSession):
    async def _query(self, migration_id: str) -> None:
        record = self.outcomes.get(migration_id)
        if record is not None and record.state == "running" and self.migration is not None \
                and self.migration.begin.migration_id == migration_id:
            await asyncio.Event().wait()  # restored, but the commit's answer never comes on this connection
        await super()._query(migration_id)


FAULTS: dict[str, type[AgentSession]] = {"none": AgentSession, "flip-byte": FlipByte, "refuse-restore": RefuseRestore,
                                         "slow-outcome": SlowOutcome}


def main(argv: list[str]) -> int:
    fault, _, config = argv[0], argv[1], argv[2]
    settings = load_settings(config)
    configure_logging("debug", "json")
    server.Agent.session_class = FAULTS[fault]
    return asyncio.run(server.serve(settings.agent))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
