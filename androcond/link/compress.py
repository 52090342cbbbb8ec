"""When the daemon compresses a chunk: per stream, from what the device's `compress` setting says and what the
link and the compressor are measured to do.

A chunk is compressed in a worker thread while the link still carries the chunks before it (the channel and
the agent's unstored allowance buffer them), so with compression a stream moves at the slower of the
compressor (raw bytes per second it takes in) and the link (wire bytes per second it carries, divided by the
ratio); without, at the link's rate. Compression therefore pays exactly when the compressor is faster than the
link, and `AutoPolicy` measures which one the stream waits on:

- While the sender waits on the link (its channel or the agent's stored reports), the link is the bottleneck
  and compressing means fewer bytes through it: it stays on.
- While it hardly waits on the link (under LINK_BUSY of the time it spends compressing), the compressor is
  the bottleneck and the link may be faster than it; how much faster only sending raw tells. The next PROBE
  bytes go raw; if they moved faster than the compressed window before them, the link is faster than the
  compressor and compression stops for the rest of the stream; else it resumes, for good (no more probes,
  so the stream does not swing between the two).

Nothing is judged before WARMUP bytes have gone: until then the channel and the agent's allowance take
whatever is sent at once, whatever the link's speed. Whatever the mode, a chunk that does not shrink below
WORTH of its size goes raw (random or already compressed data costs the receiver nothing then).

Trying costs the sender, though: on a fast link, compressing incompressible memory only to send it raw made a
move 12% slower. So after FUTILE tried chunks in a row that did not pay, `auto` sends the next chunks untried,
BACKOFF of them at first and twice as many after each further futile try (up to BACKOFF_MAX); a chunk that pays
ends the back-off. Memory that compresses is never skipped; incompressible memory is tried about log2 times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..protocol.compression import NONE

WORTH = 0.95
WINDOW = 16 * 1024 * 1024
PROBE = 64 * 1024 * 1024
LINK_BUSY = 0.05
FUTILE = 4
BACKOFF = 8
BACKOFF_MAX = 32


class ChunkPolicy(Protocol):
    codec: str  # NONE: this stream never compresses

    def wants(self) -> bool:
        """Whether the next chunk is to be compressed."""
        ...

    def record(self, *, raw: int, wire: int, compress_s: float, link_s: float) -> None:
        """One chunk sent: its size before and on the wire, the seconds spent compressing it (0 if it was not)
        and waiting for the link to take it."""
        ...


@dataclass
class FixedPolicy:
    """compress = "none" (codec NONE), or a codec named outright: every chunk tries it."""

    codec: str

    def wants(self) -> bool:
        return self.codec != NONE

    def record(self, *, raw: int, wire: int, compress_s: float, link_s: float) -> None:
        pass


@dataclass
class _Window:
    raw: int = 0
    compress_s: float = 0.0
    link_s: float = 0.0

    def add(self, raw: int, compress_s: float, link_s: float) -> None:
        self.raw += raw
        self.compress_s += compress_s
        self.link_s += link_s

    def rate(self) -> float:
        """Raw bytes per second this window moved at."""
        seconds = self.compress_s + self.link_s
        return self.raw / seconds if seconds > 0 else float("inf")


@dataclass
class AutoPolicy:
    """compress = "auto" (the rule: see the module's doc)."""

    codec: str
    warmup: int = 32 * 1024 * 1024  # the transport gives its UNSTORED_LIMIT
    mode: str = "compress"  # "compress", "probe" (raw, measuring), "raw" or "settled" (compress) for good
    sent: int = 0
    compressed_rate: float = 0.0  # raw bytes/s of the compressed window that led to the probe
    probe_rate: float = 0.0
    futile: int = 0  # tried chunks in a row that did not pay
    skip: int = 0  # chunks still to send untried
    backoff: int = BACKOFF  # how many the next back-off skips

    def __post_init__(self) -> None:
        self._window = _Window()
        if self.codec == NONE:
            self.mode = "raw"

    def wants(self) -> bool:
        return self.mode in ("compress", "settled") and self.skip == 0

    def record(self, *, raw: int, wire: int, compress_s: float, link_s: float) -> None:
        self._back_off(tried=compress_s > 0, paid=wire < raw)
        self.sent += raw
        if self.mode in ("raw", "settled") or self.sent <= self.warmup:
            return
        window = self._window
        window.add(raw, compress_s, link_s)
        if self.mode == "compress" and window.raw >= WINDOW:
            if window.link_s < LINK_BUSY * window.compress_s:
                self.compressed_rate = window.rate()
                self.mode = "probe"
            self._window = _Window()
        elif self.mode == "probe" and window.raw >= PROBE:
            self.probe_rate = window.rate()
            self.mode = "raw" if self.probe_rate >= self.compressed_rate else "settled"
            self._window = _Window()

    def _back_off(self, *, tried: bool, paid: bool) -> None:
        if not tried:
            self.skip = max(0, self.skip - 1)
        elif paid:
            self.futile, self.backoff = 0, BACKOFF
        else:
            self.futile += 1
            if self.futile >= FUTILE:
                self.skip, self.backoff = self.backoff, min(2 * self.backoff, BACKOFF_MAX)
                self.futile = FUTILE - 1  # after a back-off, one more futile try is enough for the next


def policy_for(setting: str, codec: str, warmup: int) -> ChunkPolicy:
    """A stream's policy: `codec` is what the link negotiated (NONE when nothing is common or wanted)."""
    if setting == "auto" and codec != NONE:
        return AutoPolicy(codec, warmup=warmup)
    return FixedPolicy(codec)
