"""The restorer's plan format (docs/emulation.md, "Plan format"; restorer.c reads it): records the daemon writes
from a CRIU dump (emulation/plan.py) and a device's agent writes from an emulated process it read out
(agent/guest_plan.py). Little-endian, every record 8-byte aligned."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

PLAN_MAGIC: Final = b"ACDPLAN\0"
PLAN_VERSION: Final = 2

# Record types (restorer.c: enum record_type)
R_END, R_STATUS, R_PAGES_FILE, R_CWD, R_VMA, R_PAGES, R_FD, R_SIGACTION, R_THREAD, R_STUB = range(10)
# VMA kinds
VMA_ANON, VMA_FILE_PRIVATE, VMA_FILE_SHARED, VMA_VDSO, VMA_VVAR = range(5)
# fd kinds
FD_FILE, FD_LISTEN, FD_SOCKET, FD_BOUND = 1, 2, 3, 4
# What an FD record of a socket names, as the kernel does (both sides read them off a socket: a dump's, a
# readout's /proc/<pid>/net).
AF_INET, AF_INET6 = 2, 10
SOCK_STREAM, SOCK_DGRAM = 1, 2
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
O_NONBLOCK: Final = 0o4000
# The general registers of a THREAD record, in the kernel's sigcontext order (gdb's x86_64 names).
GP_ORDER: Final = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx", "rdx",
                   "rax", "rcx", "rsp", "rip", "eflags")
FXSAVE_SIZE: Final = 512


def string(value: str) -> bytes:
    data = value.encode("utf-8", "surrogateescape") + b"\0"
    return data + b"\0" * (-len(data) % 8)


def record(kind: int, payload: bytes) -> bytes:
    payload += b"\0" * (-len(payload) % 8)
    return struct.pack("<II", kind, len(payload)) + payload


def vma(start: int, end: int, *, pgoff: int, prot: int, kind: int, open_flags: int = 0, path: str = "") -> bytes:
    payload = struct.pack("<QQQIIII", start, end, pgoff, prot & 7, kind, open_flags, 0)
    return record(R_VMA, payload + (string(path) if path else b""))


FD_FIXED = "<iIIIQIIIIII16s"  # fd, kind, flags, fdflags, pos, family, type, proto, port, backlog, v6only, addr


def fd_file(fd: int, flags: int, fdflags: int, pos: int, path: str) -> bytes:
    """An FD record of kind FD_FILE: `path` opened with `flags` (less O_CREAT, O_EXCL, O_TRUNC), at `pos`, as
    `fd`, with `fdflags` (FD_CLOEXEC)."""
    fixed = struct.pack(FD_FIXED, fd, FD_FILE, flags, fdflags, pos, 0, 0, 0, 0, 0, 0, b"")
    return record(R_FD, fixed + string(path))


def fd_socket(fd: int, kind: int, flags: int, fdflags: int, *, family: int, type: int, proto: int, port: int = 0,
              backlog: int = 0, v6only: int = 0, addr: bytes = b"") -> bytes:
    """An FD record of a socket the restorer makes afresh: FD_LISTEN (bound to `addr`:`port`, listening),
    FD_BOUND (bound) or FD_SOCKET (unbound). `addr`: the address's bytes in network order. `flags`: O_NONBLOCK."""
    fixed = struct.pack(FD_FIXED, fd, kind, flags, fdflags, 0, family, type, proto, port, backlog, v6only, addr)
    return record(R_FD, fixed)


def socket_kind(type: int, state: int, port: int) -> int:
    """How the restorer makes a TCP or UDP socket afresh: a listener listens again; a TCP connection becomes an
    unconnected socket (its peer is not where the process goes); else bound when it had a port."""
    if type == SOCK_STREAM and state == TCP_LISTEN:
        return FD_LISTEN
    if type == SOCK_STREAM and state != TCP_CLOSE:
        return FD_SOCKET
    return FD_BOUND if port else FD_SOCKET


def sigaction(signo: int, handler: int, flags: int, restorer: int, mask: int) -> bytes:
    """A SIGACTION record: the kernel's x86_64 k_sigaction of signal `signo`, which the restorer installs."""
    return record(R_SIGACTION, struct.pack("<IIQQQQ", signo, 0, handler, flags, restorer, mask))


def pages(address: int, length: int, offset: int) -> bytes:
    return record(R_PAGES, struct.pack("<QQQ", address, length, offset))


@dataclass(frozen=True)
class Thread:
    """A THREAD record's fields: `gp` in GP_ORDER, `fxsave` the 512-byte FXSAVE image rt_sigreturn restores."""

    tid: int
    main: bool
    clear_tid: int  # the kernel's clear_child_tid (0: none)
    sigmask: int
    fs_base: int
    gs_base: int
    robust_list: int
    robust_list_len: int
    tid_address: int  # where the libc keeps the TID (0: unknown)
    gp: Sequence[int]
    fxsave: bytes

    def pack(self) -> bytes:
        if len(self.gp) != len(GP_ORDER) or len(self.fxsave) != FXSAVE_SIZE:
            raise ValueError("a thread record needs 18 general registers and a 512-byte FXSAVE image")
        head = struct.pack("<IIQQQQQQQ", self.tid, int(self.main), self.clear_tid, self.sigmask, self.fs_base,
                           self.gs_base, self.robust_list, self.robust_list_len, self.tid_address)
        return record(R_THREAD, head + struct.pack("<18Q", *self.gp) + self.fxsave)


def plan(records: Sequence[bytes]) -> bytes:
    """The whole plan: header, the records, END."""
    body = b"".join(records) + record(R_END, b"")
    return PLAN_MAGIC + struct.pack("<II", PLAN_VERSION, 16 + len(body)) + body
