"""A device's flat freeze as the commit sees it (migration.plan.LiveDump): post-copy back. The agent holds a
lazy dump of the paused container (agent/sourcing.py); the target's lazy-pages' requests go to it over the
source's link and its page server's replies come back the same way, relayed here to the target's link.

The device's CRIU and the target's may speak page-transfer headers of different widths: rewritten here
(criu/page_protocol.py), so the agent's gate sees its own CRIU's. Lazy-pages' CLOSE is held and answered on
the device; only :meth:`confirm` — the target's word that it runs with every page — ends the dump well. Every
other end closes the source's link, and the agent, seeing its session end, resets the dump: the tasks stay
paused until the daemon's word (the rollback unpauses them).
"""

from __future__ import annotations

import mmap
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from ..criu.lazy_dump import LazyDumpError
from ..criu.page_protocol import WIDE, HeaderRewriter, PageProtocolError, header_for, rewriter_for
from ..link.ssh import AgentRefused, TransportError
from ..logging import get_logger
from ..protocol import protocol_pb2 as pb

log = get_logger(__name__)


class PagesLink(Protocol):
    """The source's link, as its pages need it."""

    async def send_pages(self, data: bytes) -> None: ...

    def source_pages(self) -> AsyncIterator[bytes]: ...

    async def source_end(self, action: int, seconds: float) -> pb.SourceEnded: ...


class DevicePages:
    def __init__(self, link: PagesLink, device_criu: str, *, confirm_s: float,
                 release: Callable[[], Awaitable[None]]) -> None:
        self._link = link
        self._device_header = header_for(device_criu) or WIDE
        self._confirm_s = confirm_s
        self._release = release  # closes the source's link (the agent then resets an unconfirmed dump)
        self._rewriter: HeaderRewriter | None = None
        self.bytes_served = 0
        self.confirmed = False
        self.closed = False

    def speak_with(self, client_criu: str) -> None:
        """The target's lazy-pages is of CRIU `client_criu`: rewrite its headers when they differ."""
        self._rewriter = rewriter_for(client_criu, self._device_header, mmap.PAGESIZE)

    async def feed(self, data: bytes) -> None:
        try:
            if self._rewriter is not None:
                data = self._rewriter.requests(data)
        except PageProtocolError as exc:
            log.error("the page transfer cannot go on; ending the device's dump", error=str(exc))
            await self.close()
            raise ConnectionResetError(str(exc)) from exc
        if data:
            await self._link.send_pages(data)

    async def replies(self) -> AsyncIterator[bytes]:
        try:
            async for reply in self._link.source_pages():
                self.bytes_served += len(reply)
                yield self._rewriter.replies(reply) if self._rewriter is not None else reply
        except PageProtocolError as exc:
            log.error("the device's page server's replies cannot be followed; ending its dump", error=str(exc))
            await self.close()
            raise ConnectionResetError(str(exc)) from exc
        except TransportError:
            if self.closed:  # our own end of the link, after the confirmation or a failure elsewhere
                return
            raise

    async def confirm(self) -> None:
        """The target runs it with every page: the device ends its dump well (the tasks go)."""
        try:
            await self._link.source_end(pb.SOURCE_CONFIRM, self._confirm_s)
        except (AgentRefused, TransportError) as exc:
            raise LazyDumpError(f"the device did not end its lazy dump: {exc}") from exc
        self.confirmed = True
        log.info("the device's lazy dump ended: its tasks are gone, the target has every page")

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._release()
