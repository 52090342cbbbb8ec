"""Fault injection for the test bed: the failure nobody expected, on demand.

With ``ANDROCOND_INJECT_FAULT=<point>[,<point>...]`` in the daemon's environment, :func:`inject` raises
:class:`InjectedFault` at those points of a migration. It is a ``RuntimeError`` on purpose, not one of our
errors: it stands for a bug, so the tests prove the supervisor contains what no ``except`` clause names.
Unset (always, outside tests), it does nothing.
"""

from __future__ import annotations

import os

ENV = "ANDROCOND_INJECT_FAULT"
POINTS = frozenset({"preflight", "checkpoint", "recode", "stream", "commit", "finish-source"})


class InjectedFault(RuntimeError):
    pass


def _armed() -> frozenset[str]:
    return frozenset(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())


def inject(point: str) -> None:
    assert point in POINTS, point
    if point in _armed():
        raise InjectedFault(f"injected fault at {point} ({ENV})")
