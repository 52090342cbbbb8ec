"""Where a device's restore goes: from the agent's call to the engine until androcond's runtime is run
(dockerd, containerd, its shim), runc until CRIU starts, CRIU itself, and from CRIU's end until the engine
answers. Read from three clocks that need nothing of the engine: the agent's own around its API call, the
stamp androcond's runtime writes when it is run (`androcond-runc-started`, seconds since the epoch), and
CRIU's restore log in the images directory (each line starts with the seconds since CRIU started; the file's
mtime is its last line). A restore without the runtime (the plain engine restore) has neither: nothing is
said rather than a guess.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

STAMP: Final = "androcond-runc-started"  # written by agent/runtime/androcond-runc
LOG: Final = "restore.log"
TAIL_BYTES: Final = 8192
_ELAPSED: Final = re.compile(rb"^\((\d+\.\d+)\)", re.MULTILINE)
# Clocks read a few milliseconds apart may disagree by that much; more means the files are not this restore's.
SLACK_S: Final = 0.05


def read(images: Path, called: float, answered: float) -> dict[str, float]:
    """The steps of the restore whose images are in `images`, called at `called` and answered at `answered`
    (time.time()); {} when the runtime's stamp or CRIU's log is not there (blocking: reads two files)."""
    try:
        runtime_at = float((images / STAMP).read_text().strip())
        log = images / LOG
        criu_end = log.stat().st_mtime
        with log.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except (OSError, ValueError):
        return {}
    stamps = _ELAPSED.findall(tail)
    if not stamps:
        return {}
    criu = float(stamps[-1])
    steps = {"engine": runtime_at - called, "runc": criu_end - criu - runtime_at, "criu": criu,
             "answer": answered - criu_end}
    if any(seconds < -SLACK_S for seconds in steps.values()):
        return {}
    return {name: round(max(seconds, 0.0), 3) for name, seconds in steps.items()}
