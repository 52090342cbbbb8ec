"""The descriptors of an emulated process, read from its emulator's fd table (qemu-user shares it with the guest):
here a real child process stands for qemu. Its regular files and plain devices go into the plan by path with
their flags and positions; stdio that is not a file is the new container's own; a pipe above stdio is refused by
name, and the plan carries the FD records the restorer reads."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from androcond.agent.guest_fds import LISTEN_BACKLOG, O_CLOEXEC, GuestFd, GuestSocket, guest_fds
from androcond.protocol import restorer_plan as rp


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    """A child holding: fd 20 a log file opened for appending, 5 bytes in; fd 21 /dev/null, close-on-exec. Its
    stdin and stdout are pipes."""
    log = tmp_path / "log"
    log.write_bytes(b"12345")
    script = ("import os, sys\n"
              f"a = os.open({str(log)!r}, os.O_WRONLY | os.O_APPEND); os.lseek(a, 5, 0); os.dup2(a, 20)\n"
              "b = os.open('/dev/null', os.O_RDONLY | os.O_CLOEXEC); os.dup2(b, 21, inheritable=False)\n"
              "os.close(a); os.close(b)\n"
              "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    try:
        yield child, log, child.pid
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def test_files_and_devices_are_carried_by_path_with_flags_and_position(
        holder: tuple[subprocess.Popen[bytes], Path, int]) -> None:
    _child, log, pid = holder
    fds = guest_fds(pid)
    by_fd = {f.fd: f for f in fds.files if isinstance(f, GuestFd)}
    assert by_fd[20].path == str(log) and by_fd[20].pos == 5 and by_fd[20].flags & os.O_APPEND
    assert by_fd[21].path == "/dev/null" and by_fd[21].flags & O_CLOEXEC
    assert 0 not in by_fd and 1 not in by_fd  # the engine's pipes: the new container's own
    assert any(note.startswith("fd 0 (pipe)") for note in fds.notes), fds.notes
    assert fds.refused == ()
    # As the restorer reads it: fd, kind, flags (less O_CLOEXEC), fdflags, pos, …, then the path.
    record = by_fd[21].record()
    kind, length = struct.unpack_from("<II", record)
    fd, fd_kind, flags, fdflags, pos = struct.unpack_from("<iIIIQ", record, 8)
    assert (kind, fd, fd_kind, fdflags, pos) == (rp.R_FD, 21, rp.FD_FILE, 1, 0) and not flags & O_CLOEXEC
    assert record[8 + struct.calcsize("<iIIIQIIIIII16s"):].rstrip(b"\0") == b"/dev/null" and length == len(record) - 8


def test_a_pipe_above_stdio_is_refused_by_name(tmp_path: Path) -> None:
    read, write = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(read,))
    try:
        refused = guest_fds(child.pid).refused
        assert refused == (f"fd {read} is a pipe, which the way home does not carry yet",), refused
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
        os.close(read)
        os.close(write)


def test_sockets_are_made_afresh_listening_bound_or_unconnected() -> None:
    """A child with a TCP listener on loopback, a connection to it, and a bound UDP socket (all loopback)."""
    script = ("import socket, sys\n"
              "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(5); l.setblocking(False)\n"
              "c = socket.create_connection(l.getsockname())\n"
              "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0))\n"
              "print(l.fileno(), l.getsockname()[1], c.fileno(), u.fileno(), u.getsockname()[1], flush=True)\n"
              "sys.stdin.read()\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    try:
        assert child.stdout is not None
        listen_fd, listen_port, conn_fd, udp_fd, udp_port = map(int, child.stdout.readline().split())
        fds = guest_fds(child.pid)
        assert fds.refused == (), fds.refused
        socks = {f.fd: f for f in fds.files if isinstance(f, GuestSocket)}
        listener, conn, udp = socks[listen_fd], socks[conn_fd], socks[udp_fd]
        assert (listener.kind, listener.socket.port, listener.socket.addr) == (rp.FD_LISTEN, listen_port,
                                                                               bytes([127, 0, 0, 1]))
        assert listener.flags & os.O_NONBLOCK
        assert (conn.kind, udp.kind, udp.socket.port) == (rp.FD_SOCKET, rp.FD_BOUND, udp_port)
        assert any(f"fd {conn_fd}: the TCP 127.0.0.1:" in note and "closed" in note for note in fds.notes), fds.notes
        # As the restorer reads it: family AF_INET, SOCK_STREAM, TCP, the port, the backlog, the address.
        fixed = struct.unpack_from(rp.FD_FIXED, listener.record(), 8)
        assert fixed[:3] == (listen_fd, rp.FD_LISTEN, os.O_NONBLOCK) and fixed[5:10] == (2, 1, 6, listen_port,
                                                                                       LISTEN_BACKLOG)
        assert fixed[11][:4] == bytes([127, 0, 0, 1])
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
