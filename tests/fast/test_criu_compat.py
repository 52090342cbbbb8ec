"""Which CRIU can dump INET sockets on which kernel (criu#2705), and counting a task's INET sockets from a
/proc tree laid out on disk."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from androcond.criu import compat as criu_compat
from androcond.criu.compat import (
    address_bits,
    dumps_inet_sockets,
    highest_user_address,
    inet_sockets,
    own_va_bits,
    socket_advice,
    tasks_va_bits,
    version_tuple,
)


@pytest.mark.parametrize(("text", "numbers"), [("4.2.1", (4, 2, 1)), ("4.1", (4, 1, 0)),
                                               ("6.18.44-fc-v669", (6, 18, 44)), ("6.12.117+deb13-arm64", (6, 12, 117)),
                                               ("", None), ("unknown", None)])
def test_versions(text: str, numbers: tuple[int, int, int] | None) -> None:
    assert version_tuple(text) == numbers


@pytest.mark.parametrize(("criu", "kernel", "ok"), [
    ("4.1.1", "6.18.44-fc-v669", False),   # this machine before CRIU 4.2
    ("4.2.1", "6.18.44-fc-v669", True),
    ("4.1.1", "6.16.0", False),
    ("4.1.1", "6.15.9", True),
    ("4.1.1", "6.12.117+deb13-arm64", True),  # the arm64 guest
    ("3.17.1", "5.10.0", True),
    ("", "6.12.0", False),                 # no CRIU at all
    ("", "6.18.0", False),
    ("4.1.1", "", True),                   # an agent too old to report its kernel: not held against it
])
def test_which_criu_dumps_sockets_on_which_kernel(criu: str, kernel: str, ok: bool) -> None:
    assert dumps_inet_sockets(criu, kernel) is ok


def test_the_advice_names_both_versions() -> None:
    text = socket_advice("4.1.1", "6.18.44")
    assert "CRIU 4.1.1" in text and "Linux 6.18.44" in text and "4.2.1 or later" in text


def _fake_proc(root: Path, pid: int, fds: dict[str, str], tables: dict[str, list[str]]) -> None:
    fd_dir = root / str(pid) / "fd"
    fd_dir.mkdir(parents=True)
    for name, target in fds.items():
        os.symlink(target, fd_dir / name)
    net = root / str(pid) / "net"
    net.mkdir()
    for table, inodes in tables.items():
        header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
        rows = [f"   {i}: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 {ino}"
                for i, ino in enumerate(inodes)]
        (net / table).write_text("\n".join([header, *rows]) + "\n")


def test_counting_inet_sockets(tmp_path: Path) -> None:
    # Task 10: a listener (111) and a unix socket (999, in no INET table); task 11: an established one (222).
    _fake_proc(tmp_path, 10, {"0": "/dev/null", "3": "socket:[111]", "4": "socket:[999]"},
               {"tcp": ["111", "555"], "tcp6": ["222"], "udp": []})
    _fake_proc(tmp_path, 11, {"5": "socket:[222]", "6": "pipe:[7]"}, {})
    assert inet_sockets([10, 11], tmp_path) == 2
    assert inet_sockets([11], tmp_path) == 0  # task 11's own net dir is empty in this layout
    assert inet_sockets([42], tmp_path) == 0  # a task that is gone


def test_counting_our_own_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert inet_sockets([os.getpid()]) >= 1


MAPS = """\
00400000-00401000 r-xp 00000000 fe:00 1 /bin/counter
7ffcfa3cc000-7ffcfa3ed000 rw-p 00000000 00:00 0                          [stack]
7ffcfa3f0000-7ffcfa3f2000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_the_highest_user_mapping_leaves_the_vsyscall_page_out() -> None:
    assert highest_user_address(MAPS) == 0x7FFCFA3F2000
    assert address_bits(0x7FFCFA3F2000) == 47
    assert address_bits(1 << 39) == 39 and address_bits((1 << 39) + 1) == 40
    assert address_bits(0) == 0 and highest_user_address("") == 0


def test_this_kernel_and_this_process() -> None:
    bits = own_va_bits()
    assert bits in (39, 42, 47, 48, 52, 56)
    assert tasks_va_bits([os.getpid()]) == bits  # our own stack is the highest mapping we have
    assert tasks_va_bits([2**22 + 12345]) == 0  # no such task


def test_runc_options_are_read_without_dashes_or_comments(tmp_path: Path) -> None:
    conf = tmp_path / "runc.conf"
    conf.write_text("# written by hand\ntcp-close\n--skip-in-flight  # trailing\n\nlog-file /x.log\n")
    assert criu_compat.runc_options(conf) == ["tcp-close", "skip-in-flight", "log-file"]
    assert criu_compat.runc_options(tmp_path / "absent") == []


def test_a_device_that_restores_without_the_sources_tcp_close_is_named() -> None:
    assert criu_compat.restore_needs(["tcp-close"], []) == ["tcp-close"]
    assert criu_compat.restore_needs(["tcp-close"], ["tcp-close", "skip-in-flight"]) == []
    assert criu_compat.restore_needs([], []) == []
    assert criu_compat.restore_needs(["skip-in-flight"], []) == [], "only what CRIU checks on restore"


@pytest.mark.parametrize(("cap_eff", "pipe_max", "blocked"), [
    ("0000003fffffffff", "1048576", False),  # CAP_SYS_RESOURCE: any pipe size
    ("0000003ffeffffff", "1048576", True),   # without it, 1 MiB pipes are too small
    ("0000003ffeffffff", "4194304", False),
])
def test_page_server_needs_big_pipes_or_cap_sys_resource(tmp_path: Path, cap_eff: str, pipe_max: str,
                                                         blocked: bool) -> None:
    status, limit = tmp_path / "status", tmp_path / "pipe-max-size"
    status.write_text(f"Name:\tandrocond\nCapEff:\t{cap_eff}\n")
    limit.write_text(pipe_max + "\n")
    why = criu_compat.page_server_blocker(status, limit)
    assert bool(why) == blocked
    if blocked:
        assert "fs.pipe-max-size=4194304" in why
