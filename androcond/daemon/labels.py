"""The container labels that ask for a migration, parsed with errors a user can act on."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from ..errors import AndrocondError

MIGRATE_LABEL = "androcond.migrate"
DELAY_LABEL = "androcond.delay"
KEEP_SOURCE_LABEL = "androcond.keep-source"

MAX_DELAY_S = 7 * 24 * 3600.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})


class LabelError(AndrocondError):
    """A container's androcond labels are malformed; the container is left where it is."""


@dataclass(frozen=True)
class MigrationLabels:
    device: str
    delay_s: float = 0.0
    keep_source: bool = False


def parse_duration(text: str) -> float:
    """'30s', '1m30s', '500ms', '2h', or a bare number of seconds."""
    value = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 1m30s, 500ms, 2h)")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_labels(labels: Mapping[str, str], devices: Collection[str]) -> MigrationLabels | None:
    """Return what the labels ask for, None when the container is not labelled for migration.

    Raises LabelError naming the label and the problem.
    """
    if MIGRATE_LABEL not in labels:
        return None
    device = labels[MIGRATE_LABEL].strip()
    if not device:
        raise LabelError(f"label {MIGRATE_LABEL} is empty; expected a device name")
    if device not in devices:
        known = ", ".join(sorted(devices)) or "none configured"
        raise LabelError(f"label {MIGRATE_LABEL}={device!r}: unknown device (known devices: {known})")
    delay = 0.0
    if DELAY_LABEL in labels:
        try:
            delay = parse_duration(labels[DELAY_LABEL])
        except ValueError as exc:
            raise LabelError(f"label {DELAY_LABEL}: {exc}") from exc
        if delay > MAX_DELAY_S:
            raise LabelError(f"label {DELAY_LABEL}: {labels[DELAY_LABEL]!r} is longer than 7 days")
    keep = False
    if KEEP_SOURCE_LABEL in labels:
        flag = labels[KEEP_SOURCE_LABEL].strip().lower()
        if flag not in _TRUE | _FALSE:
            raise LabelError(f"label {KEEP_SOURCE_LABEL}: {labels[KEEP_SOURCE_LABEL]!r} is not true or false")
        keep = flag in _TRUE
    return MigrationLabels(device=device, delay_s=delay, keep_source=keep)
