"""`agent serve` with one fault injected through a small AgentSession subclass, for the daemon's end-to-end
fault tests. Run: python -m tests.agent.faulty_agent FAULT --config FILE

Faults:
  flip-byte        one byte of pages-1.img changes on arrival (damage in transit)
  refuse-restore   the device engine is asked to restore a checkpoint without pstree.img (CRIU refuses)
  slow-outcome     the restore happens, then the answer is held back until the connection drops
  no-tcp-close     says its CRIU configuration for runc lacks tcp-close
  load-dies        the device's `docker load` takes two chunks of a shipped image, then its connection dies
                   and it reads no more (the session's image queue fills up: the old deadlock)
  hold-restore     at commit, once the outcome file says "restoring", the restore is held forever (log line
                   "holding the restore"): a test can SIGKILL the agent at exactly that point
  old-criu         reports CRIU 4.1.1 with its real kernel (>= 6.16 here): a device whose CRIU cannot handle
                   network sockets (criu#2705)
  no-runtime       ignores androcond's runtime on the device engine: the plain engine restore
  small-va         says its kernel gives a process 39-bit addresses, as many Android kernels do
  slow-disk        stores each chunk of file data 20 ms late (a disk slower than the link)
  slow-pages       hands each Pages frame to lazy-pages 50 ms late (a slow link after the resume): a post-copy
                   restore stays "paging" for seconds, long enough for a test to cut or kill something
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from androcond.agent import server
from androcond.agent.device import DeviceEngine, TargetContainer
from androcond.agent.errors import RestoreError
from androcond.agent.session import AgentSession
from androcond.config import load_settings
from androcond.engine import EngineUnreachable
from androcond.logging import configure_logging, get_logger
from androcond.protocol import protocol_pb2 as pb
from androcond.protocol.codes import OutcomeState


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
        record = await self.outcomes.get(migration_id)
        if record is not None and record.state == OutcomeState.RUNNING and self.migration is not None \
                and self.migration.begin.migration_id == migration_id:
            await asyncio.Event().wait()  # restored, but the commit's answer never comes on this connection
        await super()._query(migration_id)


class NoTcpClose(AgentSession):
    """Says its /etc/criu/runc.conf hands CRIU nothing (this machine's says tcp-close), as on a device set up
    without it: its CRIU would refuse every restore of a dump made with tcp-close."""

    def __init__(self, device: DeviceEngine, *args: Any) -> None:
        device.facts = replace(device.facts, criu_runc_options=())
        super().__init__(device, *args)


class OldCriu(AgentSession):
    """Says its CRIU is 4.1.1 (the kernel it reports is its real one)."""

    def __init__(self, device: DeviceEngine, *args: Any) -> None:
        device.facts = replace(device.facts, criu_version="4.1.1")
        super().__init__(device, *args)


class NoRuntime(DeviceEngine):
    """As on a device whose engine was never given androcond's runtime."""

    def __init__(self, engine: Any, facts: Any, spool_dir: Path | None = None) -> None:
        super().__init__(engine, replace(facts, runtime=""), spool_dir)


class SmallVa(AgentSession):
    """NOT a 39-bit kernel (this one gives 47 bits): reports 39, as an Android kernel built so would."""

    def __init__(self, device: DeviceEngine, *args: Any) -> None:
        device.facts = replace(device.facts, va_bits=39)
        super().__init__(device, *args)


class SlowDisk(AgentSession):
    """Stores each chunk of file data 20 ms late, as a device whose flash is slower than its link."""

    async def _stored(self, size: int) -> None:
        await asyncio.sleep(0.02)
        await super()._stored(size)


class LoadDies(DeviceEngine):
    """`docker load` reads two chunks, then fails as if its connection to the device engine was reset, and
    takes nothing more from the session's queue."""

    async def load_image(self, chunks: AsyncIterator[bytes]) -> None:
        stream = aiter(chunks)
        for _ in range(2):
            await anext(stream)
        get_logger("load-dies").info("image load dies", chunks_read=2)
        cause = EngineUnreachable(f"Docker engine at {self.engine.host}: image load: ClientOSError: "
                                  "[Errno 104] Connection reset by peer (injected)")
        raise RestoreError(f"loading the image failed: {cause}") from cause


class HoldRestore(DeviceEngine):
    """The session has written the outcome "restoring" and asks for the restore: it never happens."""

    async def restore(self, target: TargetContainer, checkpoint_name: str, *,
                      clean: bool = True) -> dict[str, float]:
        get_logger("hold-restore").info("holding the restore", container_id=target.container_id)
        await asyncio.Event().wait()
        return {}


class SlowPages(AgentSession):
    async def _pages(self, pages: pb.Pages) -> None:
        await asyncio.sleep(0.05)
        await super()._pages(pages)


FAULTS: dict[str, tuple[type[AgentSession], type[DeviceEngine]]] = {
    "none": (AgentSession, DeviceEngine), "flip-byte": (FlipByte, DeviceEngine),
    "refuse-restore": (RefuseRestore, DeviceEngine), "slow-outcome": (SlowOutcome, DeviceEngine),
    "no-tcp-close": (NoTcpClose, DeviceEngine), "load-dies": (AgentSession, LoadDies),
    "hold-restore": (AgentSession, HoldRestore), "old-criu": (OldCriu, DeviceEngine),
    "no-runtime": (AgentSession, NoRuntime), "small-va": (SmallVa, DeviceEngine),
    "slow-disk": (SlowDisk, DeviceEngine), "slow-pages": (SlowPages, DeviceEngine),
}


def main(argv: list[str]) -> int:
    fault, _, config = argv[0], argv[1], argv[2]
    settings = load_settings(config)
    configure_logging("debug", "json")
    session, device = FAULTS[fault]
    return asyncio.run(server.serve(settings.agent, server.AgentParts(session=session, device=device)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
