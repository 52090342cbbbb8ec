"""Which CRIU can dump INET sockets on which kernel (criu#2705), and counting a task's INET sockets from a
/proc tree laid out on disk."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from androcond.criu_compat import dumps_inet_sockets, inet_sockets, socket_advice, version_tuple


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
