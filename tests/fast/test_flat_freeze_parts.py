"""The flat freeze's pure decisions: the gate that holds lazy-pages' CLOSE back from a lazy dump (answered after
every reply before it, whatever pieces the bytes come in), the `freeze` setting, and when preflight takes it.
The dump itself (runc, CRIU, the paused tasks) is proven on the bed: tests/agent/test_flat_freeze.py."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from androcond.config import DeviceSettings, parse_settings
from androcond.criu.page_protocol import (
    CLOSED_OK,
    NARROW,
    PS_IOV_CLOSE,
    PS_IOV_GET,
    WIDE,
    CloseGate,
    HeaderRewriter,
    PageProtocolError,
)
from androcond.errors import ConfigError
from androcond.migration.plan import Emulated
from androcond.migration.preflight import _flat

from .test_config import GOOD, write

PAGE = 4096
ADD_F_PRESENT = 6 | 1 << 16


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("piece", [1, 7, 32, 4096, 1 << 20])
def test_the_close_waits_for_every_reply_before_it(piece: int) -> None:
    gate = CloseGate(WIDE, PAGE)
    requests = WIDE.pack(PS_IOV_GET, 3, 0x1000, 16) + WIDE.pack(PS_IOV_GET, 1, 0x9000, 16) + \
        WIDE.pack(PS_IOV_CLOSE, 0, 0, 0)
    forwarded = b"".join(gate.requests(p) for p in pieces(requests, piece))
    assert forwarded == requests[:2 * WIDE.size], "the CLOSE never reaches the dump"
    assert gate.close_held == WIDE.pack(PS_IOV_CLOSE, 0, 0, 0)
    replies = WIDE.pack(ADD_F_PRESENT, 3, 0x1000, 16) + b"\x01" * (3 * PAGE) + \
        WIDE.pack(ADD_F_PRESENT, 1, 0x9000, 16) + b"\x02" * PAGE
    due = []
    for p in pieces(replies, piece):
        assert not gate.status_due, "answered before every page had passed"
        gate.replies(p)
        due.append(gate.status_due)
    assert due[-1] and not any(due[:-1])
    assert CLOSED_OK == b"\0\0\0\0"


def test_a_close_with_nothing_outstanding_is_due_at_once() -> None:
    gate = CloseGate(WIDE, PAGE)
    assert gate.requests(WIDE.pack(PS_IOV_CLOSE, 0, 0, 0)) == b""
    assert gate.status_due


def test_nothing_may_follow_the_close_nor_answer_no_request() -> None:
    gate = CloseGate(WIDE, PAGE)
    gate.requests(WIDE.pack(PS_IOV_CLOSE, 0, 0, 0))
    with pytest.raises(PageProtocolError, match="after its CLOSE"):
        gate.requests(WIDE.pack(PS_IOV_GET, 1, 0x1000, 16))
    with pytest.raises(PageProtocolError, match="answer no request"):
        CloseGate(WIDE, PAGE).replies(WIDE.pack(ADD_F_PRESENT, 1, 0x1000, 16))
    with pytest.raises(PageProtocolError, match="never sends"):
        CloseGate(WIDE, PAGE).requests(WIDE.pack(0x99, 1, 0x1000, 16))


def test_a_41_lazy_pages_is_gated_after_its_headers_are_rewritten() -> None:
    """The device's CRIU 4.1 against the host's 4.2: the gate sees the page server's (wide) headers."""
    rewriter, gate = HeaderRewriter(NARROW, WIDE, PAGE), CloseGate(WIDE, PAGE)
    sent = gate.requests(rewriter.requests(NARROW.pack(PS_IOV_GET, 1, 0x1000, 16) + NARROW.pack(PS_IOV_CLOSE, 0,
                                                                                                0, 0)))
    assert sent == WIDE.pack(PS_IOV_GET, 1, 0x1000, 16)
    reply = WIDE.pack(ADD_F_PRESENT, 1, 0x1000, 16) + b"\x03" * PAGE
    gate.replies(reply)
    assert gate.status_due
    # The gate's own answer goes through the rewriter like the page server's would.
    assert rewriter.replies(reply + CLOSED_OK) == NARROW.pack(ADD_F_PRESENT, 1, 0x1000, 16) + b"\x03" * PAGE + \
        CLOSED_OK


def settings(tmp_path: Path, lines: str) -> DeviceSettings:
    text = GOOD.replace('address = "192.0.2.10:8022"', f'address = "192.0.2.10:8022"\n{lines}')
    (tmp_path / "id_ed25519").write_text("key")
    return parse_settings(tomllib.loads(text), write(tmp_path, text)).devices["board"]


def test_the_freeze_setting(tmp_path: Path) -> None:
    assert settings(tmp_path, "").freeze == "dump"
    assert settings(tmp_path, 'lazy = true\nfreeze = "flat"').freeze == "flat"
    assert settings(tmp_path, 'lazy = "auto"\nfreeze = "flat"').freeze == "flat"
    with pytest.raises(ConfigError, match=r"devices\.board.*freeze.*needs lazy = true"):
        settings(tmp_path, 'freeze = "flat"')
    with pytest.raises(ConfigError, match=r"freeze.*expected one of dump, flat"):
        settings(tmp_path, 'lazy = true\nfreeze = "thin"')


def test_preflight_takes_the_flat_freeze_only_where_it_is_built() -> None:
    flat = DeviceSettings(name="board", adb_serial="s", lazy="true", freeze="flat")
    assert _flat(flat, True, None), "the same ISA or across ISAs (the notify's registers go to the recode)"
    assert not _flat(DeviceSettings(name="board", adb_serial="s", lazy="true"), True, None)
    assert not _flat(flat, False, None), "post-copy off for this move (lazy = auto): the dump"
    assert not _flat(flat, True, Emulated("/usr/bin/qemu-x86_64", "10.0"))
