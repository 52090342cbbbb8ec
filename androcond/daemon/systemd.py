"""systemd integration: the sd_notify protocol, spoken directly (no libsystemd).

A service of ``Type=notify`` tells systemd how it is doing by sending datagrams of newline-separated
``KEY=VALUE`` assignments to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (see sd_notify(3)). We send:

- ``READY=1`` once the daemon follows the Docker event stream (``systemctl start`` returns then);
- ``STATUS=...`` a one-line human summary, shown by ``systemctl status``;
- ``WATCHDOG=1`` from the event loop at half of ``WatchdogSec`` (:func:`watchdog_loop`), so a stuck loop stops
  the pings and systemd kills and restarts us;
- ``STOPPING=1`` when a graceful shutdown starts.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. Notification is best effort: a failed send is
logged once and never raised, because losing a status line must never take the daemon down.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

from ..logging import get_logger

log = get_logger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

# systemd reads notifications into a PIPE_BUF-sized buffer and drops longer datagrams whole; keep STATUS
# well inside it.
_MAX_STATUS_BYTES = 1024


def _socket_address(value: str) -> str | None:
    """The address to sendto() for a ``$NOTIFY_SOCKET`` value, or None if it is not one we can use."""
    if value.startswith("@"):
        # Linux abstract namespace: a leading NUL byte instead of a path on disk.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # e.g. "vsock:CID:PORT" (systemd >= 253, for VMs): not an AF_UNIX address.
    return None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout in seconds if systemd expects pings from process ``pid``, else None."""
    usec_text = environ.get(WATCHDOG_USEC_ENV)
    if not usec_text:
        return None
    pid_text = environ.get(WATCHDOG_PID_ENV)
    if pid_text:
        # The variables are inherited by children; WATCHDOG_PID says which process systemd watches.
        try:
            if int(pid_text) != pid:
                return None
        except ValueError:
            log.warning("ignoring malformed systemd watchdog pid", variable=WATCHDOG_PID_ENV)
            return None
    try:
        usec = int(usec_text)
    except ValueError:
        usec = 0
    if usec <= 0:
        log.warning("ignoring malformed systemd watchdog interval", variable=WATCHDOG_USEC_ENV)
        return None
    return usec / 1_000_000


def _one_line(text: str) -> str:
    # A newline would start a new assignment: a status text must not be able to say READY=1 or the like.
    return " ".join(text.replace("\0", " ").splitlines())


def _truncate_utf8(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")


class Notifier:
    """Sends sd_notify messages to the service manager; every method is a no-op outside systemd.

    Methods return True when the datagram was handed to the kernel, False when nothing was sent (not under
    systemd, or the send failed). They never raise.
    """

    def __init__(self, notify_socket: str | None = None, watchdog_interval: float | None = None) -> None:
        self.notify_socket = notify_socket
        self._address = _socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning("unsupported NOTIFY_SOCKET address, not notifying systemd", notify_socket=notify_socket)
        # What systemd asked for; pings are only sent when there is also a socket (see watchdog_loop).
        self.watchdog_interval = watchdog_interval
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False,
                     pid: int | None = None) -> Notifier:
        """Build from ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` (default: ``os.environ``).

        ``unset=True`` removes the three variables afterwards, so processes we start (an adb server, tools)
        neither notify in our name nor believe they are watched.
        """
        env = os.environ if environ is None else environ
        notifier = cls(env.get(NOTIFY_SOCKET_ENV) or None,
                       _watchdog_interval(env, os.getpid() if pid is None else pid))
        if unset:
            for name in (NOTIFY_SOCKET_ENV, WATCHDOG_USEC_ENV, WATCHDOG_PID_ENV):
                env.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (``$NOTIFY_SOCKET`` was set to a usable address)."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: ``systemctl start`` returns and the watchdog starts counting."""
        return self.send("READY=1", status=status)

    def status(self, text: str) -> bool:
        """A one-line summary for ``systemctl status`` (newlines are folded, long text is cut)."""
        return self.send(status=text)

    def watchdog(self) -> bool:
        """Keep-alive ping; needed at least once per ``WatchdogSec`` after READY."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """A graceful shutdown has started."""
        return self.send("STOPPING=1", status=status)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more than the current start/stop timeout allows (e.g. rollbacks still running)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def reloading(self, status: str | None = None) -> bool:
        """A configuration reload has started (send :meth:`ready` when it is done)."""
        # MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match this to its reload request.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", status=status)

    def send(self, *assignments: str, status: str | None = None) -> bool:
        """Send one datagram of ``KEY=VALUE`` assignments (plus ``STATUS=`` if given)."""
        if self._address is None:
            return False
        lines = list(assignments)
        if status is not None:
            lines.append("STATUS=" + _truncate_utf8(_one_line(status), _MAX_STATUS_BYTES))
        if not lines:
            return False
        message = "\n".join(lines).encode()
        try:
            if self._sock is None:
                # Non-blocking: if systemd is not reading, drop the message rather than stall the event loop.
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                # Once: a gone socket fails every later send too, and the journal needs one line, not thousands.
                self._warned = True
                log.warning("cannot notify systemd; further failures are not logged",
                            notify_socket=self.notify_socket, error=str(exc))
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog_loop(notifier: Notifier) -> None:
    """Ping the systemd watchdog at half its interval, forever; returns at once if no watchdog is set.

    The pings come from the event loop itself on purpose: if a callback blocks the loop, the pings stop and
    systemd restarts the daemon. Run it as a task for the daemon's whole life, cancelled last.
    """
    interval = notifier.watchdog_interval
    if interval is None or not notifier.enabled:
        return
    period = interval / 2
    log.debug("systemd watchdog enabled", interval_s=interval, ping_every_s=period)
    while True:
        notifier.watchdog()
        await asyncio.sleep(period)
