"""A migration as one agent session receives it: what it was told (Begin), the container prepared for it, and
everything written so far — so that a discard removes exactly that."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..protocol import protocol_pb2 as pb
from .device import TargetContainer
from .fit import Fitted
from .lazy_pages import PageKeeper


@dataclass
class IncomingMigration:
    begin: pb.Begin
    target: TargetContainer | None = None
    written: list[Path] = field(default_factory=list)
    volume_dirs: dict[str, Path] = field(default_factory=dict)
    bytes_received: int = 0
    files_verified: int = 0
    failed: str = ""
    finished: bool = False
    fitted: Fitted | None = None  # the create body as this device can honour it
    keeper: PageKeeper | None = None  # post-copy, from the target's creation until the last page (or the discard)
    pager_s: float = 0.0  # post-copy: how long the keeper and lazy-pages took to be ready
