"""What the emulated restore refuses, read from a small stand-in /proc (fds as symbolic links, as the kernel
shows them)."""

from __future__ import annotations

import os
from pathlib import Path

from androcond.emulation.live import live_refusals

PLAIN_MAPS = """\
00400000-00401000 r-xp 00000000 08:01 300 /app/server
7f1c29f00000-7f1c29f08000 r--s 00000000 08:01 400 /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache
7f1c2a000000-7f1c2a028000 r--p 00000000 08:01 200 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a100000-7f1c2a200000 rw-p 00000000 00:00 0
7f1c2a300000-7f1c2a301000 rw-p 00000000 00:00 0 [anon:glibc malloc]
7ffc2a000000-7ffc2a021000 rw-p 00000000 00:00 0 [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]
"""
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5001 1 0 100 0 0 10 0
"""
# udp6's rows, shortened to the columns up to the inode (the header's words do not line up with them anyway).
UDP6 = """\
  sl  local_address remote_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode
  1: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 0:0 00:0 0 0 0 5002 2 0 0
"""
UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 6001 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 6002
"""
NETLINK = """\
sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode
0000000000000000 0   7          00000000 0        0        0     2        0        7001
"""
PACKET = "sk       RefCnt Type Proto  Iface R Rmem   User   Inode\n0000000000000000 3 3 0003 0 1 0 0 8001\n"


def process(proc: Path, pid: int, fds: dict[int, str], maps: str = PLAIN_MAPS, comm: str = "server",
            threads: int = 1, fdinfo: dict[int, str] | None = None) -> None:
    base = proc / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "fdinfo").mkdir()
    (base / "net").mkdir()
    for fd, target in fds.items():
        os.symlink(target, base / "fd" / str(fd))
        (base / "fdinfo" / str(fd)).write_text("pos:\t0\nflags:\t02\nmnt_id:\t24\n" + (fdinfo or {}).get(fd, ""))
    for tid in range(threads):
        (base / "task" / str(pid + tid)).mkdir(parents=True)
    (base / "comm").write_text(comm + "\n")
    (base / "maps").write_text(maps)
    for table, text in {"tcp": TCP, "udp6": UDP6, "unix": UNIX, "netlink": NETLINK, "packet": PACKET}.items():
        (base / "net" / table).write_text(text)


def test_what_the_restorer_recreates_is_not_refused(tmp_path: Path) -> None:
    process(tmp_path, 7, {
        0: "pipe:[9001]", 1: "/dev/pts/0", 2: "socket:[6002]",  # any stdio: replaced by the container's
        3: "/data/log.txt", 4: "/app", 5: "/dev/null", 6: "/dev/urandom", 7: "socket:[5001]", 8: "socket:[5002]",
        9: "/dev/shm/cache"}, threads=3)
    assert live_refusals([7], tmp_path) == []


def test_each_fd_the_restorer_cannot_reopen_is_named(tmp_path: Path) -> None:
    process(tmp_path, 7, {
        3: "socket:[6001]", 4: "socket:[7001]", 5: "socket:[8001]", 6: "socket:[9999]", 7: "pipe:[9002]",
        8: "anon_inode:[eventfd]", 9: "anon_inode:[eventpoll]", 10: "anon_inode:inotify",
        11: "anon_inode:[signalfd]", 12: "anon_inode:[timerfd]", 13: "anon_inode:[userfaultfd]",
        14: "/memfd:jit (deleted)", 15: "/dev/pts/3", 16: "/dev/tty", 17: "/data/old.log (deleted)",
        18: "/dev/fuse", 19: "net:[4026531840]"}, comm="python3")
    refusals = live_refusals([7], tmp_path)
    assert refusals[0] == ("process 7 (python3): fd 3 is a unix socket: the emulated restore recreates only "
                           "TCP/UDP sockets")
    expected = {4: "a netlink socket", 5: "a packet socket", 6: "a socket that is neither TCP nor UDP",
                7: "a pipe", 8: "an eventfd", 9: "an eventpoll", 10: "an inotify", 11: "a signalfd",
                12: "a timerfd", 13: "a userfaultfd", 14: "a memfd (jit (deleted))", 15: "a terminal (/dev/pts/3)",
                16: "a terminal (/dev/tty)", 17: "a deleted file (/data/old.log)", 18: "the device /dev/fuse",
                19: "net:[4026531840] (neither a file nor a TCP/UDP socket)"}
    assert len(refusals) == 1 + len(expected)
    for message, (fd, what) in zip(refusals[1:], expected.items(), strict=True):
        assert message.startswith(f"process 7 (python3): fd {fd} is {what}"), message


def test_more_than_one_process(tmp_path: Path) -> None:
    process(tmp_path, 7, {})
    process(tmp_path, 9, {3: "pipe:[1]"}, comm="worker")
    refusals = live_refusals([7, 9], tmp_path)
    assert refusals[0].startswith("the container runs 2 processes (7, 9): the emulated restore brings back one")
    assert refusals[1:] == ["process 9 (worker): fd 3 is a pipe: the emulated restore gives the container new "
                            "stdio (fds 0-2) only"]


def test_shared_and_unreopenable_memory(tmp_path: Path) -> None:
    maps = PLAIN_MAPS + """\
7f1c2b000000-7f1c2b100000 rw-s 00000000 00:01 10 /dev/zero (deleted)
7f1c2b200000-7f1c2b300000 rw-s 00000000 00:01 11
7f1c2b400000-7f1c2b500000 rw-s 00000000 00:01 32769 /SYSV00000000 (deleted)
7f1c2b600000-7f1c2b700000 r-xp 00000000 00:01 12 /memfd:jit (deleted)
7f1c2b800000-7f1c2b900000 rw-s 00000000 08:01 13 /data/table.db
7f1c2ba00000-7f1c2bb00000 r--p 00000000 08:01 14 /usr/lib/libold.so (deleted)
"""
    process(tmp_path, 7, {}, maps=maps)
    refusals = live_refusals([7], tmp_path)
    whats = ["shared anonymous memory", "shared anonymous memory", "SysV shared memory", "a memfd (jit (deleted))",
             "a writable shared mapping of /data/table.db", "a mapping of a deleted file (/usr/lib/libold.so)"]
    assert len(refusals) == len(whats), refusals
    for message, what in zip(refusals, whats, strict=True):
        assert message.startswith("process 7 (server): memory 7f1c2b") and f" is {what}: " in message, message


def test_file_locks_from_proc_locks_and_fdinfo_each_once(tmp_path: Path) -> None:
    posix = "POSIX  ADVISORY  WRITE 7 08:01:1234 0 EOF"
    ofd = "OFDLCK ADVISORY  READ  -1 08:01:5678 0 EOF"
    process(tmp_path, 7, {3: "/data/a.lock", 4: "/data/b.lock"},
            fdinfo={3: f"lock:\t1: {posix}\n", 4: f"lock:\t2: {ofd}\n"})
    process(tmp_path, 8, {})
    (tmp_path / "locks").write_text(f"1: {posix}\n1: -> POSIX  ADVISORY  WRITE 8 08:01:1234 0 EOF\n2: {ofd}\n")
    assert live_refusals([7], tmp_path) == [
        "process 7 (server): holds a lock (POSIX) on the file 08:01:1234: the emulated restore takes no file locks",
        "process 7 (server): holds a lock (OFDLCK) on the file 08:01:5678: the emulated restore takes no file locks"]
    assert live_refusals([8], tmp_path) == []  # a waiter holds nothing


def test_a_process_that_ended(tmp_path: Path) -> None:
    assert live_refusals([42], tmp_path) == ["process 42 ended while it was being inspected"]
