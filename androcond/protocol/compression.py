"""Compression of file data on the wire: the codecs each end may have, and which one a link uses.

Shared by the daemon and the agent (neither imports the other). zlib is the standard library's, so every end
has it; zstd is optional — Python 3.14's `compression.zstd`, else the `zstandard` package — so the agent still
runs on a phone's Python with no compiled dependency. Each end names its codecs in its hello; the daemon picks
one (`choose`) and marks every compressed chunk with its codec and raw size (FileData), so the receiver needs no
state of its own and never decompresses beyond a chunk.

These functions are CPU work on up to a CHUNK: callers run them in a worker thread, never on the event loop
(zlib and both zstd bindings release the GIL while they work).
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import AndrocondError
from .wire import CHUNK

NONE = "none"
ZLIB = "zlib"
ZSTD = "zstd"
# Best first: zstd compresses better and several times faster than zlib at the levels below.
PREFERENCE = (ZSTD, ZLIB)
# What a device's `compress` setting may say: "auto" is the best codec both ends have, per chunk only when it pays.
CompressSetting = Literal["auto", "zstd", "zlib", "none"]
COMPRESS_SETTINGS: tuple[CompressSetting, ...] = ("auto", "zstd", "zlib", "none")

# Fast levels: the link is the bottleneck these help with, and a slow level would make the compressor one.
ZSTD_LEVEL = 3
ZLIB_LEVEL = 1


class CorruptChunk(AndrocondError):
    """A compressed chunk that does not decompress to exactly its announced size."""


class UnknownCodec(AndrocondError):
    """A chunk compressed with a codec this end does not have."""


@dataclass(frozen=True)
class Codec:
    name: str
    compress: Callable[[bytes], bytes]
    # (data, raw_size) -> exactly raw_size bytes, or CorruptChunk; never allocates much beyond raw_size.
    decompress: Callable[[bytes, int], bytes]


def _zlib_compress(data: bytes) -> bytes:
    return zlib.compress(data, ZLIB_LEVEL)


def _zlib_decompress(data: bytes, raw_size: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        # One byte past the announced size: more output than announced is as corrupt as less.
        out = inflater.decompress(data, raw_size + 1)
    except zlib.error as exc:
        raise CorruptChunk(f"zlib: {exc}") from exc
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise CorruptChunk("zlib: the stream does not end where the chunk does")
    return _exact(out, raw_size, ZLIB)


def _exact(out: bytes, raw_size: int, name: str) -> bytes:
    if len(out) != raw_size:
        raise CorruptChunk(f"{name}: decompressed to {len(out)} bytes, {raw_size} announced")
    return out


def _stdlib_zstd(module: Any) -> Codec:
    """Python 3.14's compression.zstd."""

    def compress(data: bytes) -> bytes:
        # With its checksum (zstd frames carry none by default): a damaged chunk fails here, by name.
        options = {module.CompressionParameter.compression_level: ZSTD_LEVEL,
                   module.CompressionParameter.checksum_flag: 1}
        return bytes(module.compress(data, options=options))

    def decompress(data: bytes, raw_size: int) -> bytes:
        decompressor = module.ZstdDecompressor()
        try:
            out = bytes(decompressor.decompress(data, max_length=raw_size + 1))
        except module.ZstdError as exc:
            raise CorruptChunk(f"zstd: {exc}") from exc
        if not decompressor.eof or decompressor.unused_data:
            raise CorruptChunk("zstd: the frame does not end where the chunk does")
        return _exact(out, raw_size, ZSTD)

    return Codec(ZSTD, compress, decompress)


def _zstandard(module: Any) -> Codec:
    """The zstandard package (an optional extra)."""

    def compress(data: bytes) -> bytes:
        # A compressor per chunk: its context is not safe to share between worker threads. With its checksum
        # (zstd frames carry none by default): a damaged chunk fails here, by name.
        return bytes(module.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(data))

    def decompress(data: bytes, raw_size: int) -> bytes:
        try:
            # The frame's header may name its size, which decompress() would allocate whatever it says: checked
            # first. Without one, max_output_size bounds the output.
            declared = module.frame_content_size(data)
            if declared > raw_size:
                raise CorruptChunk(f"zstd: the frame says {declared} bytes, {raw_size} announced")
            out = bytes(module.ZstdDecompressor().decompress(data, max_output_size=raw_size,
                                                             allow_extra_data=False))
        except module.ZstdError as exc:
            raise CorruptChunk(f"zstd: {exc}") from exc
        return _exact(out, raw_size, ZSTD)

    return Codec(ZSTD, compress, decompress)


def _find_zstd() -> Codec | None:
    for name, make in (("compression.zstd", _stdlib_zstd), ("zstandard", _zstandard)):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return make(module)
    return None


def _codecs() -> dict[str, Codec]:
    found = {ZLIB: Codec(ZLIB, _zlib_compress, _zlib_decompress)}
    zstd = _find_zstd()
    if zstd is not None:
        found[ZSTD] = zstd
    return found


CODECS: dict[str, Codec] = _codecs()


def available() -> tuple[str, ...]:
    """The codecs this end has, best first (what its hello names)."""
    return tuple(name for name in PREFERENCE if name in CODECS)


def codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise UnknownCodec(f"chunk compressed with {name!r}, which this end lacks "
                           f"(it has {', '.join(available())})") from None


@dataclass(frozen=True)
class Choice:
    codec: str  # NONE: the link sends chunks as they are
    why: str = ""  # when the setting asked for a codec it does not get


def choose(setting: str, ours: tuple[str, ...] | list[str], theirs: tuple[str, ...] | list[str]) -> Choice:
    """The codec a link uses: for "auto" the best both ends have, for a named codec that one if both have it
    (else none, and why: a link that cannot compress still moves the container), for "none" none."""
    common = [name for name in PREFERENCE if name in ours and name in theirs]
    if setting == NONE:
        return Choice(NONE)
    if setting == "auto":
        return Choice(common[0] if common else NONE)
    if setting in common:
        return Choice(setting)
    lacking = [who for who, names in (("this host", ours), ("the device", theirs)) if setting not in names]
    return Choice(NONE, f"compress = {setting!r}, but {' and '.join(lacking)} lack{'s' if len(lacking) == 1 else ''} "
                        f"it: sending uncompressed")


def encode(name: str, raw: bytes, *, worth: float) -> bytes | None:
    """`raw` compressed with codec `name`, or None when that does not pay (the result is not below `worth` of
    the raw size: the chunk then goes as it is, which the receiver reads without any work)."""
    packed = codec(name).compress(raw)
    return packed if len(packed) < worth * len(raw) else None


def decode(name: str, data: bytes, raw_size: int) -> bytes:
    """A chunk as it was before compression; CorruptChunk or UnknownCodec otherwise."""
    if not 0 <= raw_size <= CHUNK:
        raise CorruptChunk(f"{name}: announced raw size {raw_size} exceeds the {CHUNK}-byte chunk")
    return codec(name).decompress(data, raw_size)
