"""The design card's name for the watcher, which lives with the daemon's inputs (androcond/daemon/watcher.py)."""

from .daemon.watcher import ContainerSeen, Watcher

__all__ = ["ContainerSeen", "Watcher"]
