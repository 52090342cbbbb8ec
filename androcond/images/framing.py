"""Entry framing: image headers, size-prefixed protobuf entries and the raw payloads after them.

An image is a header (magics, see `magic.py`) followed by entries until EOF; an entry is a little-endian
u32 size, that many bytes of a protobuf message, then for a few image types raw bytes whose length the
message gives (CRIU-IMAGES.md section 1). Raw images have no header and no entries.

Everything here is synchronous and reads one entry at a time from a binary file object, so a caller can
run it in a worker thread (asyncio.to_thread) and memory stays bounded by the largest entry.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, TypeVar

from google.protobuf.message import Message

from . import criu_pb2 as pb
from .errors import ImageFormatError
from .magic import (
    IMG_COMMON,
    IMG_SERVICE,
    INVENTORY,
    MAGICS,
    NAMES_BY_MAGIC,
    ImageKind,
    expected_magic,
    is_raw_name,
    magic_name,
)

CHUNK_SIZE: Final = 1 << 20  # bound on a single read, so a lying size field cannot allocate gigabytes
_U32: Final = struct.Struct("<I")
_MAX_U32: Final = 0xFFFFFFFF

M = TypeVar("M", bound=Message)

PAGEMAP: Final = MAGICS["PAGEMAP"]
PIPES_DATA: Final = MAGICS["PIPES_DATA"]
FIFO_DATA: Final = MAGICS["FIFO_DATA"]
SK_QUEUES: Final = MAGICS["SK_QUEUES"]
TCP_STREAM: Final = MAGICS["TCP_STREAM"]
GHOST_FILE: Final = MAGICS["GHOST_FILE"]
BPFMAP_DATA: Final = MAGICS["BPFMAP_DATA"]
IPCNS_SEM: Final = MAGICS["IPCNS_SEM"]
IPCNS_MSG: Final = MAGICS["IPCNS_MSG"]
IPCNS_SHM: Final = MAGICS["IPCNS_SHM"]

# Entry message type per image magic. Images not listed stream as opaque entries.
MESSAGE_TYPES: Final[dict[int, type[Message]]] = {
    INVENTORY: pb.inventory_entry,
    PAGEMAP: pb.pagemap_entry,  # after the pagemap_head, see message_type_for()
    MAGICS["CORE"]: pb.core_entry,
    MAGICS["MM"]: pb.mm_entry,
    MAGICS["FILES"]: pb.file_entry,
    MAGICS["FDINFO"]: pb.fdinfo_entry,
    MAGICS["PSTREE"]: pb.pstree_entry,
    MAGICS["MNTS"]: pb.mnt_entry,
    MAGICS["CREDS"]: pb.creds_entry,
    MAGICS["STATS"]: pb.stats_entry,
    PIPES_DATA: pb.pipe_data_entry,
    FIFO_DATA: pb.pipe_data_entry,
    SK_QUEUES: pb.sk_packet_entry,
    TCP_STREAM: pb.tcp_stream_entry,
    GHOST_FILE: pb.ghost_file_entry,
    BPFMAP_DATA: pb.bpfmap_data_entry,
    IPCNS_SEM: pb.ipc_sem_entry,
    IPCNS_MSG: pb.ipc_msg_entry,
    IPCNS_SHM: pb.ipc_shm_entry,
}


def message_type_for(magic: int | None, index: int) -> type[Message] | None:
    """Message type of entry number `index` (0-based) in an image with this magic, None if opaque."""
    if magic is None:
        return None
    if magic == PAGEMAP and index == 0:
        return pb.pagemap_head
    return MESSAGE_TYPES.get(magic)


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def fixed_extra_length(magic: int | None, message: Message) -> int | None:
    """Length of the raw payload after an entry when the entry alone determines it.

    None for images without payload and for the two self-framed payloads (ipcns-msg, ghost-file)."""
    if magic in (PIPES_DATA, FIFO_DATA) and isinstance(message, pb.pipe_data_entry):
        return message.bytes  # field 3 (size) is the pipe buffer size, not the payload length
    if magic == SK_QUEUES and isinstance(message, pb.sk_packet_entry):
        return message.length
    if magic == TCP_STREAM and isinstance(message, pb.tcp_stream_entry):
        return message.inq_len + message.outq_len
    if magic == BPFMAP_DATA and isinstance(message, pb.bpfmap_data_entry):
        return message.keys_bytes + message.values_bytes
    if magic == IPCNS_SEM and isinstance(message, pb.ipc_sem_entry):
        return _round_up(message.nsems * 2, 8)  # u16 semaphore values, padded to 8
    if magic == IPCNS_SHM and isinstance(message, pb.ipc_shm_entry):
        # Current CRIU keeps shm contents in pagemap-shmem images; older ones inline them here.
        return 0 if message.in_pagemaps else _round_up(message.size, 4)
    return None


def _parse(cls: type[M], raw: bytes, source: str, offset: int) -> M:
    try:
        return cls.FromString(raw)
    except Exception as exc:  # upb raises DecodeError, but any failure here means bad input
        raise ImageFormatError(source, offset, f"cannot decode {cls.__name__}: {exc}") from exc


@dataclass(frozen=True)
class ImageHeader:
    """What precedes the entries: the image kind and its per-type magic (INVENTORY for inventory.img)."""

    kind: ImageKind
    magic: int | None = None

    @classmethod
    def common(cls, name: str) -> ImageHeader:
        """Header of an IMG_COMMON image by magic name, e.g. ImageHeader.common("CORE")."""
        return cls(ImageKind.COMMON, MAGICS[name])

    @classmethod
    def inventory(cls) -> ImageHeader:
        return cls(ImageKind.INVENTORY, INVENTORY)

    @classmethod
    def raw(cls) -> ImageHeader:
        return cls(ImageKind.RAW, None)

    @property
    def name(self) -> str:
        return magic_name(self.magic)

    def encode(self) -> bytes:
        if self.kind is ImageKind.RAW:
            return b""
        if self.magic is None:
            raise ValueError(f"{self.kind.value} image header needs a magic")
        if self.kind is ImageKind.INVENTORY:
            return _U32.pack(self.magic)
        first = IMG_COMMON if self.kind is ImageKind.COMMON else IMG_SERVICE
        return _U32.pack(first) + _U32.pack(self.magic)


class Entry:
    """One entry: the message bytes exactly as read, plus any raw payload that followed them.

    The message is decoded on demand (eagerly by the reader for types we know, which validates them).
    Writing an entry writes the original bytes unless the decoded message was changed; then it is
    re-serialized, keeping the unknown fields protobuf carried through.
    """

    __slots__ = ("_message", "extra", "message_type", "offset", "raw", "source")

    def __init__(
        self,
        raw: bytes,
        extra: bytes = b"",
        *,
        message_type: type[Message] | None = None,
        offset: int = 0,
        source: str = "<memory>",
    ) -> None:
        self.raw = raw
        self.extra = extra
        self.message_type = message_type
        self.offset = offset  # byte offset of the size prefix in the source image
        self.source = source
        self._message: Message | None = None

    @classmethod
    def from_message(cls, message: Message, extra: bytes = b"") -> Entry:
        entry = cls(message.SerializeToString(), extra, message_type=type(message))
        entry._message = message
        return entry

    def __repr__(self) -> str:
        kind = self.message_type.__name__ if self.message_type else "opaque"
        return f"Entry({kind}, {len(self.raw)} bytes, extra={len(self.extra)}, offset={self.offset})"

    @property
    def message(self) -> Message | None:
        """The decoded message, None for entries of images we do not know."""
        if self._message is None and self.message_type is not None:
            self._message = _parse(self.message_type, self.raw, self.source, self.offset)
        return self._message

    def get(self, cls: type[M]) -> M:
        """The message as `cls` (typed access); decodes an opaque entry with the caller's type."""
        if self.message_type is None:
            self.message_type = cls
        if self.message_type is not cls:
            raise TypeError(f"entry holds {self.message_type.__name__}, not {cls.__name__}")
        message = self.message
        assert isinstance(message, cls)
        return message

    def set_message(self, message: Message) -> None:
        self._message = message
        self.message_type = type(message)

    @property
    def modified(self) -> bool:
        """True when the decoded message no longer means what the original bytes mean."""
        if self._message is None:
            return False
        data = self._message.SerializeToString()
        if data == self.raw:
            return False
        # Re-encoding may reorder fields (declared first, unknown after), so compare like with like.
        try:
            baseline = type(self._message).FromString(self.raw).SerializeToString()
        except Exception:
            return True
        return data != baseline

    def encode(self, *, force: bool = False) -> bytes:
        """Message bytes to write: the original ones unless changed (or `force` re-serialization)."""
        if self._message is not None and (force or self.modified):
            return self._message.SerializeToString()
        return self.raw


def _stream_size(f: BinaryIO) -> int | None:
    """Bytes left in a seekable file, None for pipes and sockets."""
    try:
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
    except (OSError, ValueError):
        return None
    return end - here


class ImageReader:
    """Reads one image from a binary file object: the header on construction, then entries or chunks.

    `name` is the image's file name: it decides raw kinds and the magic to expect, and names the file in
    errors. Offsets count from where the file object was positioned on construction.
    """

    def __init__(self, f: BinaryIO, name: str, *, chunk_size: int = CHUNK_SIZE) -> None:
        self._f = f
        self.name = name
        self.pos = 0
        self._chunk = chunk_size
        self._left = _stream_size(f)
        self._pending = b""  # bytes read while sniffing a magic that turned out to be raw data
        self.header = self._read_header()

    # -- low level reads, all bounded and all turning a short read into ImageFormatError

    def _read_upto(self, n: int) -> bytes:
        parts: list[bytes] = []
        left = n
        while left > 0:
            data = self._f.read(min(left, self._chunk))
            if not data:
                break
            parts.append(data)
            left -= len(data)
        data = b"".join(parts)
        self.pos += len(data)
        if self._left is not None:
            self._left -= len(data)
        return data

    def _read_exact(self, n: int, at: int, what: str) -> bytes:
        if self._left is not None and n > self._left:
            raise ImageFormatError(
                self.name, at, f"{what} of {n} bytes runs past end of file ({self._left} bytes left)"
            )
        data = self._read_upto(n)
        if len(data) < n:
            raise ImageFormatError(self.name, at, f"truncated {what}: {n} bytes needed, {len(data)} found")
        return data

    def _read_u32(self, what: str) -> int | None:
        """A u32, or None at a clean EOF."""
        at = self.pos
        data = self._read_upto(4)
        if not data:
            return None
        if len(data) < 4:
            raise ImageFormatError(self.name, at, f"truncated {what}: {len(data)} of 4 bytes")
        value: int = _U32.unpack(data)[0]
        return value

    # -- header

    def _read_header(self) -> ImageHeader:
        if is_raw_name(self.name):
            return ImageHeader.raw()
        want = expected_magic(self.name)
        looks_like_image = self.name.endswith(".img") or want is not None
        head = self._read_upto(4)
        if len(head) < 4:
            if looks_like_image:
                raise ImageFormatError(self.name, 0, f"truncated: {len(head)} bytes, no room for a magic")
            self._pending = head
            return ImageHeader.raw()
        first: int = _U32.unpack(head)[0]
        if first == INVENTORY:
            if want is not None and want != INVENTORY:
                raise ImageFormatError(self.name, 0, f"expected {magic_name(want)} image, found INVENTORY")
            return ImageHeader.inventory()
        if want == INVENTORY:
            raise ImageFormatError(self.name, 0, f"expected INVENTORY magic, found 0x{first:08x}")
        if first in (IMG_COMMON, IMG_SERVICE):
            second = self._read_u32("per-type magic")
            if second is None:
                raise ImageFormatError(self.name, 4, "truncated: per-type magic missing")
            if want is not None and second != want:
                raise ImageFormatError(self.name, 4, f"expected {magic_name(want)} magic, found {magic_name(second)}")
            kind = ImageKind.COMMON if first == IMG_COMMON else ImageKind.SERVICE
            return ImageHeader(kind, second)
        if want is not None:
            raise ImageFormatError(self.name, 0, f"expected {magic_name(want)} image, found magic 0x{first:08x}")
        if first in NAMES_BY_MAGIC:
            raise ImageFormatError(
                self.name, 0, f"{NAMES_BY_MAGIC[first]} image without IMG_COMMON (img_version 1) not supported"
            )
        if looks_like_image:
            raise ImageFormatError(self.name, 0, f"unknown image magic 0x{first:08x}")
        # Not an image at all (a log left in the dump directory): carry it as opaque bytes.
        self._pending = head
        return ImageHeader.raw()

    # -- entries

    def entries(self) -> Iterator[Entry]:
        """Entries one at a time until EOF. Raises ImageFormatError on malformed input."""
        if self.header.kind is ImageKind.RAW:
            raise ValueError(f"{self.name} is a raw image: read it with raw_chunks()")
        magic = self.header.magic
        index = 0
        while True:
            at = self.pos
            size = self._read_u32("entry size")
            if size is None:
                return
            raw = self._read_exact(size, at, "entry")
            entry = Entry(raw, message_type=message_type_for(magic, index), offset=at, source=self.name)
            message = entry.message  # eager decode: validates known types and frames their payloads
            if message is not None:
                entry.extra = self._read_extra(magic, message, at)
            yield entry
            index += 1

    __iter__ = entries

    def _read_extra(self, magic: int | None, message: Message, at: int) -> bytes:
        length = fixed_extra_length(magic, message)
        if length is not None:
            return self._read_exact(length, at, f"payload after {type(message).__name__}")
        if magic == IPCNS_MSG and isinstance(message, pb.ipc_msg_entry):
            return self._read_ipc_messages(message.qnum)
        if magic == GHOST_FILE and isinstance(message, pb.ghost_file_entry):
            return self._read_ghost_chunks() if message.chunks else self._read_rest()
        return b""

    def _read_framed(self, cls: type[M]) -> tuple[bytes, M] | None:
        at = self.pos
        size = self._read_u32(f"{cls.__name__} size")
        if size is None:
            return None
        raw = self._read_exact(size, at, cls.__name__)
        return _U32.pack(size) + raw, _parse(cls, raw, self.name, at)

    def _read_ipc_messages(self, count: int) -> bytes:
        parts: list[bytes] = []
        for _ in range(count):  # each round consumes >= 4 bytes or raises, so a huge count ends at EOF
            at = self.pos
            framed = self._read_framed(pb.ipc_msg)
            if framed is None:
                raise ImageFormatError(self.name, at, f"truncated: {count} queued messages announced")
            head, msg = framed
            parts += [head, self._read_exact(_round_up(msg.msize, 8), at, "ipc message body")]
        return b"".join(parts)

    def _read_ghost_chunks(self) -> bytes:
        parts: list[bytes] = []
        while (framed := self._read_framed(pb.ghost_chunk_entry)) is not None:
            head, chunk = framed
            parts += [head, self._read_exact(chunk.len, self.pos - len(head), "ghost file chunk")]
        return b"".join(parts)

    def _read_rest(self) -> bytes:
        return b"".join(self.raw_chunks())

    # -- raw data

    def raw_chunks(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The remaining bytes in chunks of at most `chunk_size` (for raw images such as pages-N.img)."""
        size = chunk_size or self._chunk
        if self._pending:
            pending, self._pending = self._pending, b""
            yield pending
        while data := self._f.read(size):
            self.pos += len(data)
            if self._left is not None:
                self._left -= len(data)
            yield data
