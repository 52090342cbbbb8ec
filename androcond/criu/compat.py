"""Which CRIU can checkpoint what on which kernel, and what a container holds that it matters for.

Shared by the daemon (its own CRIU, the source container) and the agent (the device's CRIU, in its hello).
Linux 6.16 restricted SO_PASSCRED/SO_PASSSEC to unix and netlink sockets; CRIU before 4.2 still asks for
them on every socket, so it fails the dump of any process with an INET socket there (criu#2705).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Final

from ..aio import CommandTimeout, run

# Where runc looks for criu (our own wrapper in /usr/local/sbin comes first).
CRIU_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOCKET_KERNEL = (6, 16)  # from this kernel on, CRIU needs SOCKET_CRIU to dump INET sockets
SOCKET_CRIU = (4, 2)
_NUMBERS = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_NET_TABLES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "udplite", "udplite6")


def version_tuple(text: str) -> tuple[int, int, int] | None:
    """`4.2.1`, `6.18.44-fc-v669`, `4.1` → numbers; None when there are none."""
    match = _NUMBERS.match(text.strip())
    if match is None:
        return None
    major, minor, patch = (int(part or 0) for part in match.groups())
    return major, minor, patch


def dumps_inet_sockets(criu_version: str, kernel_release: str) -> bool:
    """Can this CRIU checkpoint a process with INET sockets on this kernel? An unknown kernel (an agent too
    old to say) is not held against it; an unknown or missing CRIU is."""
    kernel = version_tuple(kernel_release)
    if kernel is None:
        return True
    if kernel[:2] < SOCKET_KERNEL:
        return version_tuple(criu_version) is not None
    criu = version_tuple(criu_version)
    return criu is not None and criu[:2] >= SOCKET_CRIU


def socket_advice(criu_version: str, kernel_release: str) -> str:
    return (f"CRIU {criu_version or '(none)'} cannot checkpoint network sockets on Linux {kernel_release} "
            f"(criu#2705); CRIU {'.'.join(map(str, SOCKET_CRIU))}.1 or later can")


async def _criu(*args: str) -> tuple[int, str]:
    """Run the criu that runc will run here: (exit status, stdout); (-1, "") if there is none or it hangs."""
    criu = shutil.which("criu", path=CRIU_PATH)
    if criu is None:
        return -1, ""
    try:
        done = await run([criu, *args], timeout_s=10, stderr="discard")
    except (CommandTimeout, OSError):
        return -1, ""
    return done.returncode, done.output.decode(errors="replace")


async def local_criu_version() -> str:
    """The version of the criu that runc will run here, '' if there is none or it does not answer."""
    _code, out = await _criu("--version")
    first = out.splitlines()[:1]
    return first[0].removeprefix("Version: ").strip() if first else ""


_host_criu_version: str | None = None


async def host_criu_version() -> str:
    """local_criu_version, asked once per process: the daemon's host (its preflight, its page server) treats it
    as a process-wide fact."""
    global _host_criu_version  # noqa: PLW0603 - a value cache, not state
    if _host_criu_version is None:
        _host_criu_version = await local_criu_version()
    return _host_criu_version


async def lazy_restore_supported() -> bool:
    """Whether CRIU can restore lazily here: userfaultfd with the non-cooperative events (fork, mremap) that
    a restored process tree needs."""
    code, _out = await _criu("check", "--feature", "uffd-noncoop")
    return code == 0


# The source's page server moves pages through a pipe of this size; without CAP_SYS_RESOURCE the kernel refuses
# a pipe above fs.pipe-max-size, and CRIU 4.2 ignores that failure and dies on the first page it serves (EBADF).
PAGE_SERVER_PIPE = 4 * 1024 * 1024
CAP_SYS_RESOURCE = 24


def page_server_blocker(status: Path = Path("/proc/self/status"),
                        pipe_max: Path = Path("/proc/sys/fs/pipe-max-size")) -> str:
    """Why CRIU's page server cannot serve lazily from this process, '' when it can."""
    try:
        caps = next(int(line.split()[1], 16) for line in status.read_text().splitlines()
                    if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = 0
    if caps & (1 << CAP_SYS_RESOURCE):
        return ""
    try:
        limit = int(pipe_max.read_text())
    except (OSError, ValueError):
        return "fs.pipe-max-size cannot be read"
    if limit >= PAGE_SERVER_PIPE:
        return ""
    return (f"this host lacks CAP_SYS_RESOURCE and fs.pipe-max-size is {limit}: CRIU's page server needs "
            f"pipes of {PAGE_SERVER_PIPE} bytes (sysctl -w fs.pipe-max-size={PAGE_SERVER_PIPE})")


CRIU_LINE_MAX = 300  # characters of one CRIU log line in a message


def log_errors(path: Path, lines: int = 3) -> list[str]:
    """The first `Error` lines of a CRIU log (the cause comes first, the clean-up's complaints after it), each
    cut to CRIU_LINE_MAX characters; [] when the log is gone. Blocking: run it in a thread."""
    errors: list[str] = []
    try:
        with path.open(errors="replace") as f:
            for line in f:
                if "Error" in line:
                    errors.append(line.strip()[:CRIU_LINE_MAX])
                    if len(errors) == lines:
                        break
    except OSError:
        return []
    return errors


def log_reason(path: Path, lines: int = 3) -> str:
    """CRIU's own reason from its log, as a suffix for an error message ("" when it says nothing)."""
    errors = log_errors(path, lines)
    return f" (CRIU: {' | '.join(errors)})" if errors else ""


def kernel_release() -> str:
    return os.uname().release


def cgroup_v2(mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether /sys/fs/cgroup here is the unified (v2) hierarchy rather than v1 controllers."""
    for line in mountinfo.read_text().splitlines():
        fields = line.split(" - ", 1)
        mount = fields[0].split()
        if len(mount) > 4 and mount[4] == "/sys/fs/cgroup" and len(fields) == 2:
            return fields[1].split()[0] == "cgroup2"
    return False


# Paths Docker masks or makes read-only with a mount of their own (moby's default OCI spec). A dump carries
# those mounts; a device where such a path does not exist (/proc/acpi on arm64) cannot remount it, and CRIU
# refuses the restore ("Can't stat mountpoint"). The agent says which are absent; the recode drops them.
DOCKER_MASKED_PATHS: Final = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats", "/proc/bus", "/proc/fs",
    "/proc/irq", "/proc/sys", "/proc/sysrq-trigger", "/sys/firmware", "/sys/devices/virtual/powercap",
)


def absent_paths(paths: tuple[str, ...] = DOCKER_MASKED_PATHS, root: Path = Path("/")) -> list[str]:
    """Those of `paths` that do not exist here."""
    return [p for p in paths if not (root / p.lstrip("/")).exists()]


RUNC_CONF: Final = Path("/etc/criu/runc.conf")
# Options CRIU writes into a dump that its restore then demands ("Need to set the --tcp-close options").
MUST_MATCH: Final = ("tcp-close",)


def runc_options(path: Path = RUNC_CONF) -> list[str]:
    """The options runc hands CRIU on this machine (its configuration file; none if absent), without dashes."""
    try:
        text = path.read_text()
    except OSError:
        return []
    options = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            options.append(words[0].lstrip("-"))
    return options


def restore_needs(source_options: list[str], device_options: list[str]) -> list[str]:
    """Options the source's dumps carry that the device's restores lack: CRIU refuses every such restore."""
    return [o for o in MUST_MATCH if o in source_options and o not in device_options]


def highest_user_address(maps_text: str) -> int:
    """The end of the highest user mapping in a /proc/PID/maps text ([vsyscall] is the kernel's, not the
    process's: CRIU does not restore it as a mapping)."""
    highest = 0
    for line in maps_text.splitlines():
        fields = line.split()
        if not fields or (len(fields) >= 6 and fields[5] == "[vsyscall]"):
            continue
        try:
            end = int(fields[0].split("-")[1], 16)
        except (IndexError, ValueError):
            continue
        highest = max(highest, end)
    return highest


def address_bits(highest_end: int) -> int:
    """Bits needed to address every byte below `highest_end`."""
    return max(highest_end - 1, 0).bit_length()


def own_va_bits(maps: Path = Path("/proc/self/maps")) -> int:
    """This kernel's user address space, read off our own stack: a process's stack sits just below the top
    (2^47 on x86_64, 2^48 or 2^39 on arm64), so the highest mapping tells the kernel's configuration apart."""
    try:
        return address_bits(highest_user_address(maps.read_text()))
    except OSError:
        return 0


def tasks_va_bits(pids: list[int], proc: Path = Path("/proc")) -> int:
    """The address bits a set of tasks needs: what a device's kernel must give to map them where they are."""
    highest = 0
    for pid in pids:
        try:
            highest = max(highest, highest_user_address((proc / str(pid) / "maps").read_text()))
        except OSError:
            continue
    return address_bits(highest) if highest else 0


def inet_sockets(pids: list[int], proc: Path = Path("/proc")) -> int:
    """How many INET sockets (TCP, UDP, raw; v4 and v6) the given tasks hold open. Blocking: run in a thread.

    Socket inodes from the tasks' fds, matched against their network namespace's tables, so a container on
    the host's network does not count the host's sockets."""
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue  # the task ended meanwhile
        for name in names:
            try:
                target = os.readlink(fd_dir / name)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    if not inodes:
        return 0
    found: set[str] = set()
    for pid in pids[:1]:  # the tasks of a container share one network namespace
        for table in _NET_TABLES:
            try:
                lines = (proc / str(pid) / "net" / table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 9 and fields[9] in inodes:
                    found.add(fields[9])
    return len(found)


def task_tree(pid: int, proc: str | Path = "/proc") -> list[int]:
    """`pid` and all its descendants (host pids), parents first: every task of a container from its init."""
    base = Path(proc)
    order, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        order.append(current)
        try:
            threads = sorted(int(t) for t in os.listdir(base / str(current) / "task"))
        except FileNotFoundError:
            continue
        for tid in threads:
            try:
                children = (base / str(current) / "task" / str(tid) / "children").read_text().split()
            except FileNotFoundError:
                continue
            queue += [int(c) for c in children]
    return order
