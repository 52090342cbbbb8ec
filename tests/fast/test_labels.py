from __future__ import annotations

import pytest

from androcond.daemon.labels import LabelError, MigrationLabels, parse_duration, parse_labels

DEVICES = ("pixel", "board")


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0),
                                               ("15", 15.0), ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "30x", "-5s", "1m 30s", "thirty"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_not_labelled() -> None:
    assert parse_labels({"other": "x"}, DEVICES) is None


def test_full_labels() -> None:
    labels = {"androcond.migrate": "pixel", "androcond.delay": "30s", "androcond.keep-source": "true"}
    assert parse_labels(labels, DEVICES) == MigrationLabels("pixel", 30.0, True)


@pytest.mark.parametrize(("labels", "message"), [
    ({"androcond.migrate": ""}, "is empty"),
    ({"androcond.migrate": "iphone"}, "unknown device (known devices: board, pixel)"),
    ({"androcond.migrate": "pixel", "androcond.delay": "soon"}, "androcond.delay"),
    ({"androcond.migrate": "pixel", "androcond.delay": "200h"}, "longer than 7 days"),
    ({"androcond.migrate": "pixel", "androcond.keep-source": "maybe"}, "androcond.keep-source"),
])
def test_bad_labels(labels: dict[str, str], message: str) -> None:
    with pytest.raises(LabelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_labels(labels, DEVICES)
