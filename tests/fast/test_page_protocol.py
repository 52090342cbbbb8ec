"""The page-transfer headers of CRIU 4.1 (24 bytes) and 4.2 (32 bytes) rewritten both ways, whatever pieces the
bytes arrive in; pages pass untouched; what post-copy never sends is refused."""

from __future__ import annotations

import pytest

from androcond.criu.page_protocol import (
    NARROW,
    PS_IOV_CLOSE,
    PS_IOV_GET,
    STATUS,
    WIDE,
    HeaderRewriter,
    PageProtocolError,
    header_for,
)

PAGE = 4096
ADD_F_PRESENT = 6 | 1 << 16  # the page server's answer: PS_IOV_ADD_F with PE_PRESENT in the flags


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_the_header_follows_the_version() -> None:
    assert header_for("4.1.1") is NARROW and header_for("4.2") is WIDE and header_for("4.2.1") is WIDE
    assert header_for("5.0") is WIDE and header_for("3.19") is NARROW
    assert header_for("") is None and header_for("unknown") is None
    assert (NARROW.size, WIDE.size) == (24, 32)


@pytest.mark.parametrize("piece", [1, 5, 24, 4096, 1 << 20])
def test_a_41_lazy_pages_talks_to_a_42_page_server(piece: int) -> None:
    rewriter = HeaderRewriter(NARROW, WIDE, PAGE)
    requests = (NARROW.pack(PS_IOV_GET, 16, 0x7F8073600000, 1 << 4) + NARROW.pack(PS_IOV_GET, 1, 0x40D000, 1 << 4)
                + NARROW.pack(PS_IOV_CLOSE, 0, 0, 0))
    sent = b"".join(rewriter.requests(p) for p in pieces(requests, piece))
    assert sent == (WIDE.pack(PS_IOV_GET, 16, 0x7F8073600000, 1 << 4) + WIDE.pack(PS_IOV_GET, 1, 0x40D000, 1 << 4)
                    + WIDE.pack(PS_IOV_CLOSE, 0, 0, 0))
    first, second = bytes(range(256)) * (16 * PAGE // 256), b"\xab" * PAGE
    answers = (WIDE.pack(ADD_F_PRESENT, 16, 0x7F8073600000, 1 << 4) + first
               + WIDE.pack(ADD_F_PRESENT, 1, 0x40D000, 1 << 4) + second + STATUS.pack(0))
    received = b"".join(rewriter.replies(p) for p in pieces(answers, piece))
    assert received == (NARROW.pack(ADD_F_PRESENT, 16, 0x7F8073600000, 1 << 4) + first
                        + NARROW.pack(ADD_F_PRESENT, 1, 0x40D000, 1 << 4) + second + STATUS.pack(0))


def test_a_42_lazy_pages_talks_to_a_41_page_server() -> None:
    rewriter = HeaderRewriter(WIDE, NARROW, PAGE)
    assert rewriter.requests(WIDE.pack(PS_IOV_GET, 2, 0x1000, 16)) == NARROW.pack(PS_IOV_GET, 2, 0x1000, 16)
    pages = b"\x01" * (2 * PAGE)
    assert rewriter.replies(NARROW.pack(ADD_F_PRESENT, 2, 0x1000, 16) + pages) == \
        WIDE.pack(ADD_F_PRESENT, 2, 0x1000, 16) + pages


def test_a_shorter_answer_carries_only_its_own_pages() -> None:
    """The page server may send fewer pages than asked: the next header comes after those."""
    rewriter = HeaderRewriter(NARROW, WIDE, PAGE)
    rewriter.requests(NARROW.pack(PS_IOV_GET, 8, 0x1000, 16) + NARROW.pack(PS_IOV_GET, 1, 0x9000, 16))
    answers = WIDE.pack(ADD_F_PRESENT, 3, 0x1000, 16) + b"a" * 3 * PAGE + WIDE.pack(ADD_F_PRESENT, 1, 0x9000, 16)
    assert rewriter.replies(answers) == (NARROW.pack(ADD_F_PRESENT, 3, 0x1000, 16) + b"a" * 3 * PAGE
                                         + NARROW.pack(ADD_F_PRESENT, 1, 0x9000, 16))


def test_what_post_copy_never_sends_is_refused() -> None:
    rewriter = HeaderRewriter(NARROW, WIDE, PAGE)
    with pytest.raises(PageProtocolError, match="command 0x1"):
        rewriter.requests(NARROW.pack(1, 1, 0x1000, 16))  # PS_IOV_ADD: a dump's, not lazy-pages'
    with pytest.raises(PageProtocolError, match="answer no request"):
        HeaderRewriter(NARROW, WIDE, PAGE).replies(b"\0" * WIDE.size)
    big = HeaderRewriter(WIDE, NARROW, PAGE)
    with pytest.raises(PageProtocolError, match="do not fit"):
        big.requests(WIDE.pack(PS_IOV_GET, 2**32, 0x1000, 16))
