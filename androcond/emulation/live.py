"""What the emulated restore cannot bring back, read from the live processes before anything is frozen.

The restorer that resumes a dump under qemu-x86_64 (EMULATION.md) recreates one process with its threads: its
memory, regular files and directories reopened by path at their positions, harmless character devices, and
INET/INET6 TCP and UDP sockets (listening ones recreated, established ones closed). Fds 0-2 may be anything:
the new container's stdio replaces them. Everything else is named here, so that a move is refused while the
container still runs untouched, rather than rolled back after a freeze.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

STDIO = frozenset({0, 1, 2})
# Character devices that carry no state: reopened by path.
HARMLESS_DEVICES = frozenset({"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"})
# /proc/PID/net tables and the column of their inode: which kind a socket:[inode] fd is.
_SOCKET_TABLES = (("tcp", 9, None), ("tcp6", 9, None), ("udp", 9, None), ("udp6", 9, None),
                  ("unix", 6, "a unix socket"), ("netlink", 9, "a netlink socket"), ("packet", 8, "a packet socket"),
                  ("raw", 9, "a raw socket"), ("raw6", 9, "a raw socket"), ("udplite", 9, "a UDP-Lite socket"),
                  ("udplite6", 9, "a UDP-Lite socket"))
_ANON = re.compile(r"^anon_inode:\[?([^\]]+)\]?$")
_TTY = re.compile(r"^/dev/(pts/\d+|tty\w*|console|ptmx)$")

_SOCKETS = "the emulated restore recreates only TCP/UDP sockets"
_FDS = "the emulated restore reopens only files, directories, harmless devices and TCP/UDP sockets"
_STDIO_ONLY = "the emulated restore gives the container new stdio (fds 0-2) only"
_MAPPINGS = "the emulated restore brings back private memory and read-only file mappings only"


def live_refusals(pids: Sequence[int], proc: Path = Path("/proc")) -> list[str]:
    """Why the processes `pids` (a container's) cannot be restored emulated: one message per obstacle, none
    when they can. Blocking reads of /proc (call it in a thread); needs root for another user's fds."""
    refusals: list[str] = []
    if len(pids) > 1:
        refusals.append(f"the container runs {len(pids)} processes ({', '.join(map(str, pids))}): the emulated "
                        "restore brings back one process (its threads included)")
    locks = _lock_owners(proc)
    for pid in pids:
        try:
            refusals += _process_refusals(pid, proc, locks)
        except FileNotFoundError:
            refusals.append(f"process {pid} ended while it was being inspected")
    return refusals


def _process_refusals(pid: int, proc: Path, locks: dict[int, list[str]]) -> list[str]:
    base = proc / str(pid)
    who = f"process {pid} ({_command(base)})"
    fd_problems, fd_locks = _fd_problems(base)
    found = [f"{who}: {what}" for what in fd_problems]
    found += [f"{who}: {what}" for what in _mapping_problems((base / "maps").read_text())]
    # A lock shows in /proc/locks under the pid that took it, and in the fdinfo of every fd that holds it
    # (an inherited flock, an OFD lock whose pid is -1): both, each lock once.
    held = dict.fromkeys([*locks.get(pid, []), *fd_locks])
    found += [f"{who}: holds a {lock}: the emulated restore takes no file locks" for lock in held]
    return found


def _command(base: Path) -> str:
    try:
        return (base / "comm").read_text().strip()
    except OSError:
        return "?"


def _fd_problems(base: Path) -> tuple[list[str], list[str]]:
    """What is wrong with the process's fds, and the locks they hold."""
    problems = []
    locks: list[str] = []
    sockets: dict[str, str | None] | None = None  # inode → kind (None: TCP/UDP), read at the first socket
    fds = sorted((int(entry.name), entry) for entry in (base / "fd").iterdir() if entry.name.isdigit())
    for fd, entry in fds:
        if fd in STDIO:
            continue
        try:
            target = str(entry.readlink())
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            if sockets is None:
                sockets = _socket_kinds(base)
            inode = target[len("socket:["):-1]
            kind = sockets.get(inode, "a socket that is neither TCP nor UDP")
            if kind is not None:
                problems.append(f"fd {fd} is {kind}: {_SOCKETS}")
            continue
        why = _fd_kind_problem(target)
        if why is not None:
            problems.append(f"fd {fd} is {why}")
        locks += _fdinfo_locks(base / "fdinfo" / str(fd))
    return problems, locks


def _fd_kind_problem(target: str) -> str | None:
    """What is wrong with an fd that links to `target` (None: the restorer reopens it)."""
    if target.startswith("pipe:["):
        return f"a pipe: {_STDIO_ONLY}"
    anon = _ANON.match(target)
    if anon is not None:
        article = "an" if anon[1][:1] in "aeio" else "a"  # a userfaultfd
        return f"{article} {anon[1]} (anon_inode): {_FDS}"
    if target.startswith("/memfd:"):
        return f"a memfd ({target[len('/memfd:'):]}): it has no path to reopen"
    if _TTY.match(target):
        return f"a terminal ({target}): {_STDIO_ONLY}"
    if not target.startswith("/"):
        return f"{target} (neither a file nor a TCP/UDP socket): {_FDS}"
    if target.endswith(" (deleted)"):
        return f"a deleted file ({target[:-len(' (deleted)')]}): it has no path to reopen"
    if target.startswith("/dev/") and not target.startswith("/dev/shm/") and target not in HARMLESS_DEVICES:
        return f"the device {target}: {_FDS}"
    return None


def _fdinfo_locks(fdinfo: Path) -> list[str]:
    """The locks held through an fd: its fdinfo has a `lock:` line for each, as /proc/locks writes them."""
    try:
        text = fdinfo.read_text()
    except OSError:
        return []
    locks = [_lock(line.partition(":")[2].split()) for line in text.splitlines() if line.startswith("lock:")]
    return [lock for _, lock in filter(None, locks)]


def _socket_kinds(base: Path) -> dict[str, str | None]:
    """Inodes of the sockets in the process's network namespace, by kind."""
    kinds: dict[str, str | None] = {}
    for table, column, kind in _SOCKET_TABLES:
        try:
            lines = (base / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue  # a table this kernel lacks
        for line in lines:
            fields = line.split()
            if len(fields) > column:
                kinds.setdefault(fields[column], kind)
    return kinds


def _mapping_problems(maps_text: str) -> list[str]:
    problems = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        where, perms = fields[0], fields[1]
        path = fields[5] if len(fields) > 5 else ""
        what = _mapping_problem(perms[3:4] == "s", "w" in perms, path)
        if what is not None:
            problems.append(f"memory {where} is {what}: {_MAPPINGS}")
    return problems


def _mapping_problem(shared: bool, writable: bool, path: str) -> str | None:
    if path.startswith("/memfd:"):
        return f"a memfd ({path[len('/memfd:'):]})"
    if path.startswith("/SYSV"):
        return "SysV shared memory"
    if shared and (not path or path.startswith("/dev/zero")):
        return "shared anonymous memory"  # its content lives only in memory, shared with whoever mapped it
    if shared and writable:
        # A writable MAP_SHARED file mapping could be mapped shared again from the file, but its sense is
        # writing to the file or sharing with another process, which a one-process restore from dumped pages
        # does not keep: refused until a case needs it. A read-only one (glibc maps gconv-modules.cache so)
        # shows nothing but the file, as a mapping from the file brings it back.
        return f"a writable shared mapping of {path}"
    if path.startswith("/") and path.endswith(" (deleted)"):
        return f"a mapping of a deleted file ({path[:-len(' (deleted)')]})"
    return None


def _lock(fields: list[str]) -> tuple[int, str] | None:
    """(pid, what) of a lock as /proc/locks writes it: `1: POSIX  ADVISORY  WRITE 7 08:01:1234 0 EOF`;
    None for a waiter (`1: -> POSIX ...`), which holds nothing."""
    if len(fields) < 6 or fields[1] == "->":
        return None
    kind, pid, inode = fields[1], fields[4], fields[5]
    return (int(pid) if pid.lstrip("-").isdigit() else -1), f"lock ({kind}) on the file {inode}"


def _lock_owners(proc: Path) -> dict[int, list[str]]:
    """The locks in /proc/locks, by the pid that took them."""
    owners: dict[int, list[str]] = {}
    try:
        text = (proc / "locks").read_text()
    except OSError:
        return owners
    for line in text.splitlines():
        lock = _lock(line.split())
        if lock is not None:
            owners.setdefault(lock[0], []).append(lock[1])
    return owners
