"""An emulated process's descriptors, for the way home: qemu-user shares its fd table with the guest (a guest's
fd N is qemu's fd N), so the guest's open files are read from /proc/<qemu>/fd and fdinfo, less qemu's own (its
gdb stub's unix sockets, anything under the restorer's directory). The stub's listening socket is known by its
path (/proc/<qemu>/net/unix); the connection it accepted shows no path there (seen on the bed's arm64 kernel),
so the caller names it: the socket that appeared in qemu's table when the agent connected. A regular file goes
into the plan by the path the container sees (the same path at home, where the writable layer came too), with
its open flags and position; stdio that is not a file (the engine's pipes, /dev/null) is the new container's
own. A TCP or UDP socket is made afresh at home as the restorer makes one on the way out: a listening socket
bound to its address and port and listening again, a bound UDP socket bound, a connection as a fresh
unconnected socket (said in the notes: its peer is on the device's network, not home's). What the restorer
cannot reopen (unix sockets, pipes above stdio, deleted files) is refused by name.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..protocol import restorer_plan as rp
from ..protocol.emulation import MOUNT, STUB_MOUNT, STUB_SOCKET
from ..protocol.restorer_plan import AF_INET, AF_INET6, O_NONBLOCK, SOCK_DGRAM, SOCK_STREAM, TCP_CLOSE, TCP_LISTEN

O_CLOEXEC = 0o2000000
IPPROTO_TCP, IPPROTO_UDP = 6, 17
# /proc/net/tcp does not show a listener's backlog: listen() again with the kernel's limit (it clamps to
# net.core.somaxconn), so no connection the program would have queued is refused for want of room.
LISTEN_BACKLOG = 4096
# The socket tables of a network namespace, as /proc/<pid>/net shows them: (file, family, type, protocol).
SOCKET_TABLES = (("tcp", AF_INET, SOCK_STREAM, IPPROTO_TCP), ("tcp6", AF_INET6, SOCK_STREAM, IPPROTO_TCP),
                 ("udp", AF_INET, SOCK_DGRAM, IPPROTO_UDP), ("udp6", AF_INET6, SOCK_DGRAM, IPPROTO_UDP))
# Character devices every container has: reopened by path at home like a file.
PLAIN_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"})


@dataclass(frozen=True)
class GuestFd:
    fd: int
    flags: int  # as opened (fdinfo's flags)
    pos: int
    path: str  # as the container sees it

    def record(self) -> bytes:
        fdflags = 1 if self.flags & O_CLOEXEC else 0  # FD_CLOEXEC
        return rp.fd_file(self.fd, self.flags & ~O_CLOEXEC, fdflags, self.pos, self.path)


@dataclass(frozen=True)
class InetSocket:
    """A row of /proc/<pid>/net/{tcp,tcp6,udp,udp6}."""

    family: int
    type: int
    proto: int
    addr: bytes  # network order, 4 or 16 bytes
    port: int
    peer_port: int
    state: int

    @property
    def shown(self) -> str:
        address = ipaddress.ip_address(self.addr)
        return f"{'TCP' if self.type == SOCK_STREAM else 'UDP'} {address}:{self.port}"


@dataclass(frozen=True)
class GuestSocket:
    fd: int
    flags: int
    socket: InetSocket
    kind: int  # FD_LISTEN, FD_BOUND or FD_SOCKET

    def record(self) -> bytes:
        s = self.socket
        return rp.fd_socket(self.fd, self.kind, self.flags & O_NONBLOCK, 1 if self.flags & O_CLOEXEC else 0,
                            family=s.family, type=s.type, proto=s.proto, port=s.port,
                            backlog=LISTEN_BACKLOG if self.kind == rp.FD_LISTEN else 0, addr=s.addr)


@dataclass(frozen=True)
class GuestFds:
    files: tuple[GuestFd | GuestSocket, ...]
    notes: tuple[str, ...]
    refused: tuple[str, ...]  # one reason per fd the restorer cannot reopen


def _stub_inodes(qemu_pid: int) -> set[str]:
    """The inodes of the unix sockets bound to the stub's path: its listener (the connection it accepted shows
    no path here: the caller names that one)."""
    path = f"{STUB_MOUNT}/{STUB_SOCKET}"
    inodes: set[str] = set()
    try:
        lines = Path(f"/proc/{qemu_pid}/net/unix").read_text().splitlines()[1:]
    except OSError:
        return inodes
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path:
            inodes.add(fields[6])
    return inodes


def _address(text: str) -> tuple[bytes, int]:
    """"0100007F:1F90" as /proc/net/tcp prints it (each 32-bit word of the address as the host reads it):
    the address's bytes in network order, and the port."""
    words, port = text.split(":")
    raw = b"".join(struct.pack("=I", int(words[i:i + 8], 16)) for i in range(0, len(words), 8))
    return raw, int(port, 16)


def inet_sockets(pid: int) -> dict[str, InetSocket]:
    """The TCP and UDP sockets of the process's network namespace, by inode. Blocking."""
    found: dict[str, InetSocket] = {}
    for table, family, kind, proto in SOCKET_TABLES:
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 in that namespace
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            addr, port = _address(fields[1])
            _peer, peer_port = _address(fields[2])
            found[fields[9]] = InetSocket(family, kind, proto, addr, port, peer_port, int(fields[3], 16))
    return found


def _socket(fd: int, flags: int, sock: InetSocket, notes: list[str]) -> GuestSocket:
    kind = rp.socket_kind(sock.type, sock.state, sock.port)
    if sock.type == SOCK_STREAM and sock.state not in (TCP_CLOSE, TCP_LISTEN):
        notes.append(f"fd {fd}: the {sock.shown} connection (to port {sock.peer_port}) is closed: a fresh "
                     "unconnected socket takes its place")
    elif sock.peer_port:
        notes.append(f"fd {fd}: the {sock.shown} socket is no longer connected to port {sock.peer_port}")
    return GuestSocket(fd, flags, sock, kind)


def _fdinfo(qemu_pid: int, fd: int) -> tuple[int, int]:
    """(flags, pos) of one fd."""
    flags = pos = 0
    for line in Path(f"/proc/{qemu_pid}/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "flags":
            flags = int(value.strip(), 8)
        elif key == "pos":
            pos = int(value.strip())
    return flags, pos


def sockets(pid: int) -> set[str]:
    """The sockets in a process's fd table, as readlink gives them ("socket:[123]"). Blocking."""
    found: set[str] = set()
    where = Path(f"/proc/{pid}/fd")
    for name in os.listdir(where):
        try:
            target = os.readlink(where / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target)
    return found


def guest_fds(qemu_pid: int, stub_connections: frozenset[str] = frozenset()) -> GuestFds:
    """The guest's descriptors as the restorer can reopen them at home; `stub_connections`: the sockets the
    stub accepted ("socket:[123]"). Blocking."""
    own_sockets = _stub_inodes(qemu_pid)
    inet = inet_sockets(qemu_pid)
    files: list[GuestFd | GuestSocket] = []
    notes: list[str] = []
    refused: list[str] = []
    where = Path(f"/proc/{qemu_pid}/fd")
    for name in sorted(os.listdir(where), key=int):
        fd = int(name)
        try:
            target = os.readlink(where / name)
            mode = os.stat(where / name).st_mode
            flags, pos = _fdinfo(qemu_pid, fd)
        except OSError:
            continue  # closed meanwhile (qemu's own, transient)
        if target.startswith(("socket:[", "pipe:[", "anon_inode:")):
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else ""
            if inode and (inode in own_sockets or target in stub_connections):
                continue  # qemu's gdb stub
            if inode in inet:
                files.append(_socket(fd, flags, inet[inode], notes))
                continue
            if fd <= 2:
                notes.append(f"fd {fd} ({target.split(':')[0]}) is the new container's own")
            else:
                refused.append(f"fd {fd} is a {target.split(':')[0]}, which the way home does not carry yet")
            continue
        if target.startswith((f"{MOUNT}/", f"{STUB_MOUNT}/")):
            continue  # the restorer's and the stub's files: the emulator's, not the program's
        deleted = target.endswith(" (deleted)")
        if fd <= 2 and (stat.S_ISCHR(mode) or deleted):
            notes.append(f"fd {fd} ({target}) is the new container's own")
        elif stat.S_ISREG(mode) and deleted:
            refused.append(f"fd {fd} is the deleted file {target[:-10]}")
        elif stat.S_ISREG(mode) or stat.S_ISDIR(mode) or target in PLAIN_DEVICES:
            files.append(GuestFd(fd, flags, pos, target))
        else:
            refused.append(f"fd {fd} ({target}) is neither a file nor a directory")
    return GuestFds(tuple(files), tuple(notes), tuple(refused))


def children(pid: int) -> list[int]:
    """A process's children (the container's init's: its qemu). Blocking."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
