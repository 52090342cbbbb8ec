"""Image magics and how a file name maps to an image kind.

Values are facts of the CRIU image format (see CRIU-IMAGES.md section 1). All u32 are little-endian.
"""

from __future__ import annotations

import enum
import re
from typing import Final

INVENTORY: Final = 0x58313116
IMG_COMMON: Final = 0x54564319
IMG_SERVICE: Final = 0x55105940

# Per-type magics that follow IMG_COMMON (or IMG_SERVICE for STATS/IRMAP_CACHE).
MAGICS: Final[dict[str, int]] = {
    "PSTREE": 0x50273030,
    "FDINFO": 0x56213732,
    "PAGEMAP": 0x56084025,
    "CORE": 0x55053847,
    "IDS": 0x54432030,
    "VMAS": 0x54123737,
    "PIPES": 0x56513555,
    "PIPES_DATA": 0x56453709,
    "FIFO": 0x58364939,
    "FIFO_DATA": 0x59333054,
    "SIGACT": 0x55344201,
    "UNIXSK": 0x54373943,
    "INETSK": 0x56443851,
    "PACKETSK": 0x60454618,
    "ITIMERS": 0x57464056,
    "POSIX_TIMERS": 0x52603957,
    "SK_QUEUES": 0x56264026,
    "UTSNS": 0x54473203,
    "CREDS": 0x54023547,
    "IPC_VAR": 0x53115007,
    "IPCNS_SHM": 0x46283044,
    "IPCNS_MSG": 0x55453737,
    "IPCNS_SEM": 0x59573019,
    "REG_FILES": 0x50363636,
    "EXT_FILES": 0x59255641,
    "FS": 0x51403912,
    "MM": 0x57492820,
    "REMAP_FPATH": 0x59133954,
    "GHOST_FILE": 0x52583605,
    "TCP_STREAM": 0x51465506,
    "EVENTFD_FILE": 0x44523722,
    "EVENTPOLL_FILE": 0x45023858,
    "EVENTPOLL_TFD": 0x44433746,
    "SIGNALFD": 0x57323820,
    "INOTIFY_FILE": 0x48424431,
    "INOTIFY_WD": 0x54562009,
    "MNTS": 0x55563928,
    "NETDEV": 0x57373951,
    "NETNS": 0x55933752,
    "TTY_FILES": 0x59433025,
    "TTY_INFO": 0x59453036,
    "TTY_DATA": 0x59413026,
    "FILE_LOCKS": 0x54323616,
    "RLIMIT": 0x57113925,
    "FANOTIFY_FILE": 0x55096122,
    "FANOTIFY_MARK": 0x56506035,
    "SIGNAL": 0x59255647,
    "NETLINK_SK": 0x58005614,
    "NS_FILES": 0x61394011,
    "TUNFILE": 0x57143751,
    "CGROUP": 0x59383330,
    "TIMERFD": 0x50493712,
    "CPUINFO": 0x61404013,
    "USERNS": 0x55474906,
    "SECCOMP": 0x64413049,
    "BINFMT_MISC": 0x67343323,
    "AUTOFS": 0x49353943,
    "FILES": 0x56303138,
    "MEMFD_INODE": 0x48453499,
    "TIMENS": 0x43114433,
    "PIDNS": 0x61157326,
    "BPFMAP_FILE": 0x57506142,
    "BPFMAP_DATA": 0x64324033,
    "APPARMOR": 0x59423047,
    "STATS": 0x57093306,
    "IRMAP_CACHE": 0x57004059,
    "KDAT": 0x57023458,
}
NAMES_BY_MAGIC: Final[dict[int, str]] = {value: name for name, value in MAGICS.items()}
SERVICE_MAGICS: Final = frozenset({MAGICS["STATS"], MAGICS["IRMAP_CACHE"]})


class ImageKind(enum.Enum):
    INVENTORY = "inventory"  # INVENTORY magic, then entries
    COMMON = "common"  # IMG_COMMON + per-type magic, then entries
    SERVICE = "service"  # IMG_SERVICE + per-type magic, then entries
    RAW = "raw"  # no magic: opaque bytes (pages, tarballs, netlink dumps)


# Raw images are recognised by name: they have no magic to look at.
_RAW_NAMES: Final = re.compile(
    r"(pages|ifaddr|route6?|rule|ip6?tables|nftables|netns-ct|netns-exp)-[0-9a-f]+\.img"
    r"|tmpfs(-dev)?-[0-9a-f]+\.tar\.gz\.img"
)

# Images whose per-type magic is implied by their name: a different magic there means a corrupt or
# misnamed file, which must not be passed on as opaque bytes.
_EXPECTED: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"pstree\.img", "PSTREE"),
        (r"fdinfo-[0-9a-f]+\.img", "FDINFO"),
        (r"pagemap-.+\.img", "PAGEMAP"),
        (r"core-[0-9a-f]+\.img", "CORE"),
        (r"ids-[0-9a-f]+\.img", "IDS"),
        (r"mm-[0-9a-f]+\.img", "MM"),
        (r"files\.img", "FILES"),
        (r"mountpoints-[0-9a-f]+\.img", "MNTS"),
        (r"pipes-data\.img", "PIPES_DATA"),
        (r"fifo-data\.img", "FIFO_DATA"),
        (r"sk-queues\.img", "SK_QUEUES"),
        (r"tcp-stream-[0-9a-f]+\.img", "TCP_STREAM"),
        (r"ghost-file-[0-9a-f]+\.img", "GHOST_FILE"),
        (r"bpfmap-data\.img", "BPFMAP_DATA"),
        (r"ipcns-sem-[0-9a-f]+\.img", "IPCNS_SEM"),
        (r"ipcns-msg-[0-9a-f]+\.img", "IPCNS_MSG"),
        (r"ipcns-shm-[0-9a-f]+\.img", "IPCNS_SHM"),
        (r"creds-[0-9a-f]+\.img", "CREDS"),
        (r"stats-(dump|restore)", "STATS"),
        (r"irmap-cache", "IRMAP_CACHE"),
    )
)


def is_raw_name(name: str) -> bool:
    """True for the raw (magic-less) image kinds, recognised by file name."""
    return _RAW_NAMES.fullmatch(name) is not None


def expected_magic(name: str) -> int | None:
    """The per-type magic a file of this name must carry, if the name implies one."""
    if name == "inventory.img":
        return INVENTORY
    for pattern, magic_name in _EXPECTED:
        if pattern.fullmatch(name):
            return MAGICS[magic_name]
    return None


def magic_name(magic: int | None) -> str:
    """Human-readable name of a magic, as `crit show` prints it."""
    if magic is None:
        return "RAW"
    if magic == INVENTORY:
        return "INVENTORY"
    return NAMES_BY_MAGIC.get(magic, f"UNKNOWN(0x{magic:08x})")
