"""CRIU's page-transfer protocol between the source's page server and the device's `criu lazy-pages`, as far as
post-copy uses it, and the rewriting that lets two CRIU versions with different headers talk.

Every request and every reply starts with a header (CRIU's `struct page_server_iov`: command, page count,
address, task). lazy-pages sends GET requests (header only) and at the end a CLOSE; the page server answers a GET
with a header and that many pages, and a CLOSE with a 4-byte status. CRIU 4.2 widened the page count to 64 bits
(its commit "pagemap: use unsigned long for page counts"): the header grew from 24 to 32 bytes, so a lazy-pages
of CRIU 4.1 (Debian 13's, the bed's arm64 device) and a page server of CRIU 4.2 wait on each other for ever.
The source relays every byte anyway (Pages frames), so it rewrites the headers on the way.
"""

from __future__ import annotations

import collections
import enum
import struct
from typing import Final

from ..errors import AndrocondError
from .compat import version_tuple

NARROW: Final = struct.Struct("<IIQQ")  # CRIU before 4.2: u32 cmd, u32 nr_pages, u64 vaddr, u64 dst_id
WIDE: Final = struct.Struct("<I4xQQQ")  # CRIU 4.2 on: u32 cmd, (padding), u64 nr_pages, u64 vaddr, u64 dst_id
WIDE_SINCE: Final = (4, 2, 0)
CMD_MASK: Final = 0xFFFF  # the command's flags live above it
PS_IOV_GET: Final = 7
PS_IOV_CLOSE: Final = 0x1023
PS_IOV_FORCE_CLOSE: Final = 0x1024
STATUS: Final = struct.Struct("<i")  # the answer to a CLOSE
NARROW_MAX_PAGES: Final = 2**32 - 1


class PageProtocolError(AndrocondError):
    """The page-transfer stream holds what post-copy never sends: the relay cannot rewrite it."""


def header_for(criu_version: str) -> struct.Struct | None:
    """The header a CRIU of that version speaks; None when the version is unknown."""
    version = version_tuple(criu_version)
    if version is None:
        return None
    return WIDE if version >= WIDE_SINCE else NARROW


def rewriter_for(client_criu: str, server: struct.Struct | None, page_size: int) -> HeaderRewriter | None:
    """What a lazy-pages of CRIU `client_criu` needs to talk to a page server speaking `server`: a rewriter when
    the headers differ, None when they match or either is unknown (taken as the same)."""
    client = header_for(client_criu)
    if client is None or server is None or client is server:
        return None
    return HeaderRewriter(client, server, page_size)


class _Reply(enum.Enum):
    PAGES = "pages"  # a header, then its pages
    STATUS = "status"  # 4 bytes


class HeaderRewriter:
    """Rewrites the headers of one lazy-pages ↔ page-server stream, both ways; pages pass as they are. Bytes
    arrive in any pieces: what does not yet make a whole header waits for the rest."""

    def __init__(self, client: struct.Struct, server: struct.Struct, page_size: int) -> None:
        self.client = client
        self.server = server
        self.page_size = page_size
        self._requests = bytearray()
        self._replies = bytearray()
        self._expected: collections.deque[_Reply] = collections.deque()
        self._payload_left = 0

    def requests(self, data: bytes) -> bytes:
        """lazy-pages → page server."""
        self._requests += data
        out = bytearray()
        size = self.client.size
        while len(self._requests) >= size:
            cmd, nr_pages, vaddr, dst_id = self.client.unpack_from(self._requests)
            del self._requests[:size]
            command = cmd & CMD_MASK
            if command == PS_IOV_GET:
                self._expected.append(_Reply.PAGES)
            elif command in (PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE):
                self._expected.append(_Reply.STATUS)
            else:
                raise PageProtocolError(f"lazy-pages sent command {command:#x}, which post-copy never sends")
            out += self._pack(self.server, cmd, nr_pages, vaddr, dst_id)
        return bytes(out)

    def replies(self, data: bytes) -> bytes:
        """page server → lazy-pages."""
        self._replies += data
        out = bytearray()
        while self._replies:
            if self._payload_left:
                take = min(self._payload_left, len(self._replies))
                out += self._replies[:take]
                del self._replies[:take]
                self._payload_left -= take
                continue
            if not self._expected:
                raise PageProtocolError("the page server sent bytes that answer no request")
            if self._expected[0] is _Reply.STATUS:
                if len(self._replies) < STATUS.size:
                    break
                out += self._replies[:STATUS.size]
                del self._replies[:STATUS.size]
                self._expected.popleft()
                continue
            if len(self._replies) < self.server.size:
                break
            cmd, nr_pages, vaddr, dst_id = self.server.unpack_from(self._replies)
            del self._replies[:self.server.size]
            self._expected.popleft()
            out += self._pack(self.client, cmd, nr_pages, vaddr, dst_id)
            self._payload_left = nr_pages * self.page_size
        return bytes(out)

    @staticmethod
    def _pack(header: struct.Struct, cmd: int, nr_pages: int, vaddr: int, dst_id: int) -> bytes:
        if header is NARROW and nr_pages > NARROW_MAX_PAGES:
            raise PageProtocolError(f"{nr_pages} pages in one transfer do not fit CRIU 4.1's header")
        return header.pack(cmd, nr_pages, vaddr, dst_id)


class CloseGate:
    """Holds back lazy-pages' CLOSE from a lazy *dump*'s page server until the move is confirmed.

    A lazy dump ends (and kills the source's tasks) once its client says CLOSE. lazy-pages says it as soon as it
    has fetched every page, even when the container on the device has died meanwhile: forwarded at once, both
    copies could be lost. So the gate answers the CLOSE itself (status 0, after every reply before it, as the
    page server would) and leaves the real one to :meth:`LazyDump.confirm`. Works on the page server's headers
    (after any rewriting of the requests, before any of the replies)."""

    def __init__(self, header: struct.Struct, page_size: int) -> None:
        self.header = header
        self.page_size = page_size
        self.close_held: bytes | None = None  # the CLOSE header held back, once lazy-pages sent it
        self._requests = bytearray()
        self._replies = bytearray()
        self._pages_due = 0  # GET requests forwarded whose reply header has not come back yet
        self._payload_left = 0

    def requests(self, data: bytes) -> bytes:
        """What may go on to the page server."""
        self._requests += data
        out = bytearray()
        size = self.header.size
        while len(self._requests) >= size:
            request = bytes(self._requests[:size])
            del self._requests[:size]
            command = self.header.unpack(request)[0] & CMD_MASK
            if self.close_held is not None:
                raise PageProtocolError("lazy-pages sent a request after its CLOSE")
            if command == PS_IOV_GET:
                self._pages_due += 1
                out += request
            elif command in (PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE):
                self.close_held = request
            else:
                raise PageProtocolError(f"lazy-pages sent command {command:#x}, which post-copy never sends")
        return bytes(out)

    def replies(self, data: bytes) -> None:
        """Follow the page server's replies (they pass unchanged), to know when every GET has its answer."""
        self._replies += data
        while self._replies:
            if self._payload_left:
                take = min(self._payload_left, len(self._replies))
                del self._replies[:take]
                self._payload_left -= take
                continue
            if len(self._replies) < self.header.size:
                break
            if not self._pages_due:
                raise PageProtocolError("the page server sent bytes that answer no request")
            nr_pages = self.header.unpack_from(self._replies)[1]
            del self._replies[:self.header.size]
            self._pages_due -= 1
            self._payload_left = nr_pages * self.page_size

    @property
    def status_due(self) -> bool:
        """lazy-pages waits for the answer to its CLOSE, and every reply before it has passed."""
        return self.close_held is not None and not self._pages_due and not self._payload_left \
            and not self._replies


CLOSED_OK: Final = STATUS.pack(0)
