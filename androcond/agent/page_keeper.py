"""The device's end of post-copy: `criu lazy-pages`, and a process that holds its page socket open
(`python -m androcond.agent.page_keeper IMAGES THEIRS HOLD STATUS`, started by the agent in a session of its own
when it makes the target container; it starts lazy-pages when the agent writes GO on its stdin, at the commit).

Why a process apart from the agent: when `criu lazy-pages` loses its page-server socket it exits and closes the
restored tasks' userfaultfds, and from then on every page that never arrived reads as zeros, so the container
would run on with corrupted memory (verified: docs/post-copy.md). The agent relays the page protocol on its end
of a socketpair (HOLD) and hands this keeper a copy of that end, which the keeper never reads or writes: it only
keeps it open. When the agent dies, its copy closes and the keeper's keeps the socket up, so `lazy-pages`
waits and a task that touches a missing page blocks instead of reading zeros. Whoever then removes the
container (the agent's discard, or its restart recovery) kills the keeper's process group afterwards. The
keeper exits with `lazy-pages`' status: 0 once every page has arrived.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..criu.compat import CRIU_PATH

LOG_NAME = "lazy-pages.log"
KEEPER_LOG = "page-keeper.log"  # the keeper's own stderr (and lazy-pages' before its log opens)
GO = b"g"


def main(argv: list[str]) -> int:
    images, theirs, hold, status_fd = Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    if sys.stdin.buffer.read(1) != GO:
        return 0  # the agent went away (or discarded the migration) before its commit: nothing to guard
    criu = shutil.which("criu", path=CRIU_PATH)
    if criu is None:
        print("page keeper: criu not found", file=sys.stderr)
        return 127
    # lazy-pages works in the images directory: the restore (through androcond's runtime, whose work path is
    # that directory too) finds its lazy-pages.socket there.
    lazy = subprocess.Popen(
        [criu, "lazy-pages", "--page-server", "--ps-socket", str(theirs), "-D", str(images), "-W", str(images),
         "--status-fd", str(status_fd), "-o", LOG_NAME, "-v2"],
        pass_fds=(theirs, status_fd), stdin=subprocess.DEVNULL)
    os.close(theirs)
    os.close(status_fd)
    code = lazy.wait()
    os.close(hold)  # only now: lazy-pages is gone, nothing can read a missing page any more
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
