"""The two roles a migration is written against. A phase asks a *source* for the container (its facts, its
freeze, what must move, its restore if the move fails) and talks to a *target* over a link (its facts, the
files, the commit, and what it runs). Today the source is the host's engine (androcond/source/host.py) and the
target an agent on a device (androcond/target/agent.py); the way back or an emulating target are other
implementations of the same roles, not copies of the phases."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from ..config import DeviceSettings
from ..link.payload import OutgoingFile, Progress, ProgressCallback
from ..link.transport import PageSource
from ..popcorn.notify import Regset
from ..protocol import protocol_pb2 as pb
from .container_config import TargetPlan
from .plan import Frozen, SourceFacts


class TargetLink(Protocol):
    """An open link to the target, after its hello (what it is: ISA, kernel, CRIU, space, …)."""

    hello: pb.AgentHello
    pages_wire_bytes: int  # post-copy's pages as they went on the wire

    async def begin(self, begin: pb.Begin) -> pb.BeginAck: ...

    async def send_files(self, files: Iterable[OutgoingFile] | AsyncIterable[OutgoingFile], *, window: int = 8,
                         progress: ProgressCallback | None = None) -> Progress: ...

    async def commit(self, file_count: int = 0) -> pb.Outcome: ...

    async def commit_lazy(self, file_count: int, pages: PageSource,
                          on_resumed: Callable[[pb.Outcome], Awaitable[None]], paging_s: float) -> pb.Outcome: ...

    async def query(self, migration_id: str) -> pb.Outcome: ...


# How a migration reaches its target: one link for as long as the block runs (a seam: tests give their own).
LinkFactory = Callable[[DeviceSettings], AbstractAsyncContextManager[TargetLink]]


class Source(Protocol):
    """Where the container runs before the move, and where it runs again if the move fails."""

    # --- before the freeze: what it is ---
    async def inspect(self) -> dict[str, Any]: ...  # the running container (Rejected if it does not run)

    async def facts(self, inspect: dict[str, Any]) -> SourceFacts: ...

    async def target_plan(self, inspect: dict[str, Any], device: DeviceSettings) -> TargetPlan: ...

    async def sockets_blocker(self, count: int) -> str: ...  # why its CRIU cannot dump the sockets, or ""

    async def popcorn_executables(self, pids: tuple[int, ...], target_isa: str) -> tuple[str, ...]: ...

    # The Popcorn notify: what each task's runtime left in regs_dst/tls_dst (the recode's registers).
    async def notify(self, pids: tuple[int, ...], target_isa: str) -> tuple[Regset, ...]: ...

    # What stops its processes from running under an x86_64 emulator of this version, named, and what the
    # move cannot know (notes).
    async def emulation_blockers(self, pids: tuple[int, ...],
                                 emulator_version: str) -> tuple[list[str], list[str]]: ...

    def image_name(self, inspect: dict[str, Any]) -> str: ...

    def save_image(self, image: str) -> AsyncIterator[bytes]: ...

    # --- the freeze and what moves ---
    # flat: a lazy dump whose tasks serve the memory (Frozen.pages), where the source can; else a full dump.
    # relay: a source whose files must come to the daemon first may hand them on as they come (Frozen.relayed).
    # readout: an emulated container is read out of its emulator (Plan.native_resume).
    async def freeze(self, inspect: dict[str, Any], *, flat: bool = False, relay: bool = False,
                     readout: bool = False) -> Frozen: ...

    def mounted_root(self, inspect: dict[str, Any]) -> AbstractAsyncContextManager[Path]: ...

    def payload(self, inspect: dict[str, Any]) -> list[OutgoingFile]: ...  # blocking: the files besides images

    # --- after: exactly once ---
    async def stopped(self) -> None: ...  # the frozen container is seen stopped (bounded)

    async def forget_stopping(self) -> None: ...

    async def restore(self) -> None: ...  # runs again from its checkpoint (the rollback)

    async def remove(self) -> None: ...  # it runs on the target: the source goes

    async def clean_after_rollback(self) -> None: ...
