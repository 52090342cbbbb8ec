"""The values the phases hand each other, frozen once made: what the source is (its facts), what preflight
decided (the plan), what the freeze produced and what was shipped. A phase takes what it needs as arguments
and returns what the next one needs; nothing passes through a shared object."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..link.payload import OutgoingFile
from ..link.transport import PageSource
from ..recoder import RecodeOptions, VdsoTemplate
from .container_config import TargetPlan


@dataclass(frozen=True)
class SourceFacts:
    """What preflight needs to know of the running container and the machine it runs on (read before anything
    is frozen)."""

    pids: tuple[int, ...]  # every task of the container, as the source sees them
    va_bits: int  # the address bits its highest mapping needs
    isa: str
    criu_options: tuple[str, ...]  # what the source's CRIU dumps with (its runc.conf), that a restore demands
    inet_sockets: int
    cgroup_v2: bool
    absent_paths: frozenset[str]  # paths the engine masks that the source itself lacks
    page_server_blocker: str  # why the source cannot serve pages lazily (post-copy), "" when it can
    memory: int  # bytes in use, 0 when the engine does not say
    disk: int  # bytes of the writable layer and the named volumes
    lazy_needs_flat: bool = False  # its pages are served from a flat freeze only (a device: it keeps no dump)
    emulated: bool = False  # it runs x86_64 under androcond's emulator on its device (`isa` is the program's)
    readout_blocker: str = ""  # emulated: why it cannot be read out of its emulator, "" when it can


@dataclass(frozen=True)
class CrossIsa:
    pids: tuple[int, ...]  # every task of the container (source pids), for the Popcorn notify
    target: str  # the target's ISA
    vdso: VdsoTemplate  # the target kernel's, from its hello
    executables: tuple[str, ...]  # the tasks' binaries as they see them: `<bin>_<isa>` goes there on the target


@dataclass(frozen=True)
class Emulated:
    """Across ISAs without Popcorn binaries: the target runs the container under its qemu-x86_64, and
    androcond's restorer (shipped with the images) rebuilds the process there from a plan made of the dump."""

    emulator: str  # the device's qemu-x86_64
    emulator_version: str
    notes: tuple[str, ...] = ()  # what the move cannot know or will leave behind (said in the record)
    stub: bool = False  # the device runs qemu's gdb stub for it (hello.emulator_stub): it can be read out later


@dataclass(frozen=True)
class Plan:
    """Preflight's decisions: nothing of it changes once the container is frozen."""

    inspect: dict[str, Any]  # the source engine's view of the container when preflight began
    target: TargetPlan  # the target's create body and what was adjusted on the way
    cross: CrossIsa | None  # set for a move across ISAs with Popcorn binaries (recoded)
    emulated: Emulated | None  # set for a move across ISAs under the target's emulator
    recode: RecodeOptions  # what the target needs of the images
    lazy: bool  # post-copy
    estimate: int  # bytes it will take on the target
    flat: bool = False  # post-copy from a lazy dump: the pages are served from the frozen tasks
    # The way home from emulation: the source reads the process out of its emulator (a readout, not a CRIU
    # dump) and the target runs androcond's restorer natively on it.
    native_resume: bool = False


class LiveDump(PageSource, Protocol):
    """A lazy dump, as the commit sees it: it serves the pages, and ends well only when confirmed."""

    bytes_served: int

    def speak_with(self, client_criu: str) -> None: ...

    async def confirm(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Frozen:
    """What the freeze produced: the source's checkpoint (the rollback, until the target's word)."""

    images: Path
    at: float  # time.monotonic() of the freeze: the downtime's start
    via: str  # "runc", "engine", or "lazy-dump" (the flat freeze)
    # Seconds of the freeze's own steps worth a line in the record (the way back: the device's checkpoint and
    # bringing its files here), by timing name.
    steps: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what the freeze could not carry (a readout's), for people
    # The flat freeze: the lazy dump that holds the tasks and serves their pages (criu/lazy_dump.LazyDump).
    pages: LiveDump | None = None
    # The source's files still on their way (the way back, nothing to recode): the stream phase relays them to
    # the target as they come (source/relay.py) instead of reading them from `images`. Read once.
    relayed: AsyncIterator[OutgoingFile] | None = None


@dataclass(frozen=True)
class Shipped:
    """What the stream sent: the file count the commit names, and the images the target restores from (the
    recoded ones when recoded), which post-copy's page server serves."""

    file_count: int
    images: Path
