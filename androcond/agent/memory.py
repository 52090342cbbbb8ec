"""Keep the agent's memory flat in the size of what it receives.

Every file chunk arrives as a ~1 MiB bytes object, parsed on the event loop and freed in a worker thread after
the write. glibc serves such blocks with mmap at first, but raises its mmap threshold each time one is freed
(up to 32 MiB), after which they come from the heaps of several threads' arenas, are freed into them out of
order, and stay resident: the agent's peak RSS grew with the container (432 MiB for 1 GiB of memory moved).
A fixed threshold below the chunk size keeps those blocks mmapped, so each free returns them to the kernel;
the smaller allocations of the protocol stay on the heap (an even lower threshold costs throughput).
There is no library for this: it is one glibc call, made through ctypes, and a no-op elsewhere (bionic, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

M_MMAP_THRESHOLD: Final = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD: Final = 512 * 1024  # below wire.CHUNK (1 MiB), above asyncssh's packets (256 KiB)


def keep_chunks_mmapped(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (True when this is glibc and it took it)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold) == 1)
