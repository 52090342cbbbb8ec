"""The device's end of post-copy: `criu lazy-pages` and what keeps its page channel open
(`python -m androcond.agent.page_keeper IMAGES STATUS_FD`, started by the agent in a session of its own).

Why a process apart from the agent: when `criu lazy-pages` loses its page-server socket it exits and closes the
restored tasks' userfaultfds, and from then on every page that never arrived reads as zeros, so the container
would run on with corrupted memory (verified: docs/post-copy.md). The keeper holds that socket. It relays
bytes between it and its stdin/stdout (the agent, which carries them over the migration's ssh channel); when the
agent goes away (stdin ends: the link was cut, or the agent was killed) it stops relaying but keeps the socket
open, so `lazy-pages` waits and a task that touches a missing page blocks instead of reading zeros. Whoever
then removes the container (the agent's discard, or its restart recovery) kills the keeper's process group
afterwards. The keeper exits with `lazy-pages`' status: 0 once every page has arrived.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

CHUNK = 256 * 1024
LOG_NAME = "lazy-pages.log"


def _upstream(ours: socket.socket) -> None:
    """stdin (from the agent) → lazy-pages. At the end of stdin the socket stays open (see above)."""
    while True:
        try:
            data = os.read(0, CHUNK)
        except OSError:
            return
        if not data:
            return
        try:
            ours.sendall(data)
        except OSError:
            return  # lazy-pages is gone: its exit status tells the agent


def _downstream(ours: socket.socket) -> None:
    """lazy-pages → stdout (to the agent). A dead agent is no reason to close the socket."""
    while True:
        try:
            data = ours.recv(CHUNK)
        except OSError:
            return
        if not data:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
        except OSError:
            return


def main(argv: list[str]) -> int:
    images, status_fd = Path(argv[0]), int(argv[1])
    criu = shutil.which("criu", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if criu is None:
        print("page keeper: criu not found", file=sys.stderr)
        return 127
    ours, theirs = socket.socketpair()
    # lazy-pages works in the images directory: the restore (through androcond's runtime, whose work path is
    # that directory too) finds its lazy-pages.socket there.
    lazy = subprocess.Popen(
        [criu, "lazy-pages", "--page-server", "--ps-socket", str(theirs.fileno()), "-D", str(images),
         "-W", str(images), "--status-fd", str(status_fd), "-o", LOG_NAME, "-v2"],
        pass_fds=(theirs.fileno(), status_fd), stdin=subprocess.DEVNULL)
    theirs.close()
    os.close(status_fd)
    for target in (_upstream, _downstream):
        threading.Thread(target=target, args=(ours,), daemon=True).start()
    code = lazy.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
