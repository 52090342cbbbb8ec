"""Post-copy back's pure parts: when the way home takes it (the device's flat freeze only, never refusing the way
home), and the relay of a device's lazy dump (source/device_pages.py) against a stand-in for the source's link:
headers rewritten both ways, the confirmation, and every other end releasing the link. The device's dump itself
is proven on the bed: tests/agent/test_post_copy_back.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from androcond.config import DeviceSettings
from androcond.criu.lazy_dump import LazyDumpError
from androcond.criu.page_protocol import NARROW, PS_IOV_GET, WIDE
from androcond.link.ssh import AgentRefused, TransportError
from androcond.migration.context import home_place
from androcond.migration.errors import Rejected
from androcond.migration.plan import SourceFacts
from androcond.migration.preflight import _lazy
from androcond.protocol import protocol_pb2 as pb
from androcond.source.device_pages import DevicePages

PAGE = 4096
ADD_F_PRESENT = 6 | 1 << 16
OLD_CRIU, NEW_CRIU = "4.1.1", "4.2.0"  # narrow and wide page-transfer headers


def device(lazy: str, freeze: str = "dump") -> DeviceSettings:
    return DeviceSettings(name="phone", adb_serial="s", lazy=lazy, freeze=freeze)  # type: ignore[arg-type]


@pytest.mark.parametrize(("lazy", "freeze", "home_lazy", "home_freeze"), [
    ("true", "flat", "auto", "flat"),
    ("auto", "flat", "auto", "flat"),
    ("true", "dump", "false", "dump"),  # a device keeps no dump to serve pages from: whole, not refused
    ("false", "dump", "false", "dump"),
])
def test_the_way_home_takes_post_copy_where_the_device_freezes_flat(lazy: str, freeze: str, home_lazy: str,
                                                                    home_freeze: str) -> None:
    home = home_place(device(lazy, freeze))
    assert (home.name, home.lazy, home.freeze, home.emulate, home.compress) == \
        ("host", home_lazy, home_freeze, "false", "none")
    assert (home_place().lazy, home_place().freeze) == ("false", "dump")


def facts(*, from_device: bool, blocker: str = "") -> SourceFacts:
    return SourceFacts(pids=(), va_bits=47, isa="x86_64", criu_options=(), inet_sockets=0, cgroup_v2=True,
                       absent_paths=frozenset(), page_server_blocker=blocker, memory=0, disk=0,
                       lazy_needs_flat=from_device)


def test_a_device_serves_pages_from_its_flat_freeze_only() -> None:
    hello = pb.AgentHello(lazy_pages=True)
    flat = device("true", "flat")
    assert _lazy(facts(from_device=True), flat, hello, None), "the same ISA or across ISAs"
    assert _lazy(facts(from_device=False), device("true"), hello, None), "the host serves from its dump"
    with pytest.raises(Rejected, match=r"served by its flat freeze only"):
        _lazy(facts(from_device=True), device("true"), hello, None)
    assert not _lazy(facts(from_device=True), device("auto"), hello, None), "auto without it: whole"
    with pytest.raises(Rejected, match=r"cannot serve pages \(upgrade"):
        _lazy(facts(from_device=True, blocker="device phone's agent cannot serve pages (upgrade it)"), flat,
              hello, None)


class SourceLinkStandIn:
    """The source's link as DevicePages uses it: what was sent, the replies to give, the end it was asked."""

    def __init__(self, replies: list[bytes], *, fail_after: TransportError | None = None,
                 refuse_end: bool = False) -> None:
        self.sent: list[bytes] = []
        self.ended: list[int] = []
        self._replies = replies
        self._fail_after = fail_after
        self._refuse_end = refuse_end

    async def send_pages(self, data: bytes) -> None:
        self.sent.append(data)

    async def source_pages(self) -> AsyncIterator[bytes]:
        for reply in self._replies:
            yield reply
        if self._fail_after is not None:
            raise self._fail_after

    async def source_end(self, action: int, seconds: float) -> pb.SourceEnded:
        self.ended.append(action)
        if self._refuse_end:
            raise AgentRefused("the lazy dump did not end well: criu exited 1", "source")
        return pb.SourceEnded(present=True)


class Releases:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1


async def served(pages: DevicePages) -> list[bytes]:
    return [reply async for reply in pages.replies()]


def test_an_older_target_criu_is_spoken_to_in_its_own_headers() -> None:
    reply = WIDE.pack(ADD_F_PRESENT, 1, 0x1000, 16) + b"\x05" * PAGE
    link, release = SourceLinkStandIn([reply[:10], reply[10:]]), Releases()
    pages = DevicePages(link, NEW_CRIU, confirm_s=5, release=release)
    pages.speak_with(OLD_CRIU)
    asyncio.run(pages.feed(NARROW.pack(PS_IOV_GET, 1, 0x1000, 16)))
    assert link.sent == [WIDE.pack(PS_IOV_GET, 1, 0x1000, 16)], "the device's CRIU reads its own headers"
    got = asyncio.run(served(pages))
    assert b"".join(got) == NARROW.pack(ADD_F_PRESENT, 1, 0x1000, 16) + b"\x05" * PAGE
    assert pages.bytes_served == len(reply)
    assert release.count == 0


def test_the_same_criu_is_relayed_byte_for_byte() -> None:
    link = SourceLinkStandIn([b"abc", b"def"])
    pages = DevicePages(link, NEW_CRIU, confirm_s=5, release=Releases())
    pages.speak_with(NEW_CRIU)
    asyncio.run(pages.feed(b"\x07" * 7))  # not even whole headers: nothing to rewrite, so nothing parsed
    assert link.sent == [b"\x07" * 7]
    assert asyncio.run(served(pages)) == [b"abc", b"def"]


def test_a_request_the_rewriter_cannot_follow_ends_the_dump() -> None:
    link, release = SourceLinkStandIn([]), Releases()
    pages = DevicePages(link, NEW_CRIU, confirm_s=5, release=release)
    pages.speak_with(OLD_CRIU)
    with pytest.raises(ConnectionResetError):
        asyncio.run(pages.feed(NARROW.pack(0x99, 1, 0x1000, 16)))
    assert (link.sent, release.count, pages.closed) == ([], 1, True)


def test_the_link_failing_is_raised_unless_it_was_our_own_end() -> None:
    lost = SourceLinkStandIn([b"x"], fail_after=TransportError("the device's link closed"))
    with pytest.raises(TransportError, match="link closed"):
        asyncio.run(served(DevicePages(lost, NEW_CRIU, confirm_s=5, release=Releases())))

    async def closed_then_served() -> list[bytes]:
        release = Releases()
        pages = DevicePages(SourceLinkStandIn([b"x"], fail_after=TransportError("closed")), NEW_CRIU,
                            confirm_s=5, release=release)
        await pages.close()
        await pages.close()
        assert release.count == 1, "the link is released once"
        return await served(pages)

    assert asyncio.run(closed_then_served()) == [b"x"]


def test_only_the_confirmation_ends_the_dump_well() -> None:
    link = SourceLinkStandIn([])
    pages = DevicePages(link, NEW_CRIU, confirm_s=5, release=Releases())
    asyncio.run(pages.confirm())
    assert (link.ended, pages.confirmed) == ([pb.SOURCE_CONFIRM], True)

    refused = SourceLinkStandIn([], refuse_end=True)
    pages = DevicePages(refused, NEW_CRIU, confirm_s=5, release=Releases())
    with pytest.raises(LazyDumpError, match=r"did not end its lazy dump.*criu exited 1"):
        asyncio.run(pages.confirm())
    assert not pages.confirmed
