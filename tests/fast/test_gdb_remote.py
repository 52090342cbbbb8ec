"""The gdb remote protocol's pure parts and the readout's parsing, on what qemu 10.0's stub sends (its
target.xml uses the xi prefix undeclared; its i386 feature files hold commented-out registers). The readout
itself, against the device's qemu, is proven on the arm64 bed (tests/agent/test_emulated_resume.py)."""

from __future__ import annotations

import pytest

from androcond.agent.gdb_remote import GdbRemoteError, checksum, escape, parse_stop, parse_thread, unescape
from androcond.agent.guest_state import includes, parse_maps, register_layout, split_registers
from androcond.emulation.plan import entrypoint
from androcond.protocol.emulation import STUB_MOUNT, STUB_SOCKET, stub_supported

TARGET = (b'<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target>'
          b'<architecture>i386:x86-64</architecture><xi:include href="core.xml"/><xi:include href="linux.xml"/>'
          b'</target>')
CORE = b'''<?xml version="1.0"?>
<!-- x86_64 64bit -->
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<feature name="org.gnu.gdb.i386.core">
  <reg name="rax" bitsize="64" type="int64"/>
  <reg name="rip" bitsize="64" type="code_ptr"/>
  <reg name="eflags" bitsize="32" type="i386_eflags"/>
  <!-- <reg name="cs_base" bitsize="64" type="int64"/> -->
  <reg name="fs_base" bitsize="64" type="int64"/>
</feature>'''
LINUX = b'<feature name="org.gnu.gdb.i386.linux"><reg name="orig_rax" bitsize="64" type="int" regnum="57"/></feature>'


def test_a_packet_body_round_trips_through_escaping() -> None:
    data = b"a#b$c}d*e"
    assert unescape(escape(data)) == data
    assert b"#" not in escape(data) and b"$" not in escape(data)
    assert checksum(b"g") == b"67"


def test_run_length_encoding_is_expanded() -> None:
    assert unescape(b"0* ") == b"0" * 4  # ' ' is 32: three more
    assert unescape(b"ab*!") == b"a" + b"b" * 5


def test_stop_replies_and_thread_ids() -> None:
    assert parse_stop(b"T05thread:p38e0.38e1;").thread == 0x38E1
    assert parse_stop(b"S02").signal == 2
    assert parse_thread(b"3bd1") == 0x3BD1
    with pytest.raises(GdbRemoteError):
        parse_stop(b"OK")
    with pytest.raises(GdbRemoteError):
        parse_thread(b"pzz.yy")


def test_the_register_layout_follows_the_description_and_skips_comments() -> None:
    assert includes(TARGET) == ["core.xml", "linux.xml"]
    layout = register_layout({"target.xml": TARGET, "core.xml": CORE, "linux.xml": LINUX})
    assert [(r.name, r.offset, r.size) for r in layout] == [
        ("rax", 0, 8), ("rip", 8, 8), ("eflags", 16, 4), ("fs_base", 20, 8), ("orig_rax", 28, 8)]
    raw = bytes(range(28))  # the stub leaves orig_rax out of `g`
    regs = split_registers(raw, layout)
    assert set(regs) == {"rax", "rip", "eflags", "fs_base"}
    assert regs["fs_base"] == bytes(range(20, 28))


def test_a_description_that_includes_itself_or_is_missing_is_refused() -> None:
    looping = b'<target><xi:include href="target.xml"/></target>'
    with pytest.raises(GdbRemoteError, match="twice"):
        register_layout({"target.xml": looping})
    with pytest.raises(GdbRemoteError, match=r"core\.xml was not read"):
        register_layout({"target.xml": TARGET})
    with pytest.raises(GdbRemoteError, match="bits"):
        register_layout({"target.xml": b'<feature><reg name="x" bitsize="7"/></feature>'})


def test_the_guests_maps() -> None:
    maps = parse_maps("400000-401000 r--p 00000000 00:2a 123   /bin/heap\n"
                      "7fdf8a1ff000-7fdf8a9ff000 rw-p 00000000 00:00 0   [stack]\n"
                      "4bc000-14e3000 rw-p 00000000 00:00 0\n")
    assert [(m.start, m.end, m.perms, m.path) for m in maps] == [
        (0x400000, 0x401000, "r--p", "/bin/heap"), (0x7FDF8A1FF000, 0x7FDF8A9FF000, "rw-p", "[stack]"),
        (0x4BC000, 0x14E3000, "rw-p", "")]
    with pytest.raises(GdbRemoteError):
        parse_maps("zz-401000 r--p 0 00:00 0\n")


def test_the_stub_runs_only_where_qemu_runs_the_guest_without_waiting() -> None:
    assert stub_supported("10.0.13") and stub_supported("11.2")
    assert not stub_supported("7.2.22") and not stub_supported("") and not stub_supported("ten")
    argv = entrypoint("/q", "/m", stub=True)
    assert argv[:5] == ["/q", "-B", "0", "-g", f"{STUB_MOUNT}/{STUB_SOCKET},suspend=n"]
    assert "-g" not in entrypoint("/q", "/m")


def test_a_description_with_bad_numbers_is_refused_by_name() -> None:
    with pytest.raises(GdbRemoteError, match="described badly"):
        register_layout({"target.xml": b'<feature><reg name="rax" bitsize="sixty-four"/></feature>'})
