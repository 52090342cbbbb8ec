"""The CLI's display, driven with API records as GET /migrations and GET /migrations/{id} return them: the
progress bar of `migrate --wait`, its final line, the `migrations` table and `migrations show`."""

from __future__ import annotations

import io
import os
import re
import signal
import time
from typing import Any

import pytest
from rich.console import Console

from androcond.cli.views import (
    MigrationProgress,
    _ctrl_c_held,
    containers_table,
    fmt_clock,
    fmt_seconds,
    fmt_when,
    migration_detail,
    migrations_table,
    outcome_line,
    print_plain,
)

MB = 1_000_000
ID = "3f2a9c0de1b24c6f8a7e5d4c3b2a1f00"
REDRAW = "\r\x1b[2K"  # rich's live display going back to the start of its line
HIDE, SHOW = "\x1b[?25l", "\x1b[?25h"


@pytest.fixture(autouse=True)
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich reads these; a developer's or CI's own values must not change what is drawn."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES"):
        monkeypatch.delenv(name, raising=False)


def terminal(width: int = 120) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width, color_system=None), out


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rec(state: str, sent: int = 0, expected: int | None = None, **more: Any) -> dict[str, Any]:
    """A record as GET /migrations/{id} serves it (bytes_expected only while it runs)."""
    record: dict[str, Any] = {"id": ID, "container_id": "c0ffee" * 10, "container_name": "web", "device": "pixel",
                              "origin": "api", "state": state, "keep_source": False, "checkpoint_name": "",
                              "target_container_id": "", "error": "", "bytes_sent": sent, "timings": {},
                              "created_at": 1_700_000_000.0, "updated_at": 1_700_000_005.0}
    if expected is not None:
        record["bytes_expected"] = expected
        record["files_sent"] = 0
    record.update(more)
    return record


def frames(output: str) -> list[str]:
    """Each frame the live display drew, in order (the last one is drawn again when it stops)."""
    body = output.removeprefix(HIDE).removesuffix(SHOW)
    return [f.strip() for f in body.split(REDRAW)]


def drive(records: list[dict[str, Any]], width: int = 120, step: float = 1.0) -> tuple[list[str], str]:
    console, out = terminal(width)
    clock = Clock()
    with MigrationProgress(console, get_time=clock) as view:
        for record in records:
            view(record)
            clock.now += step
    assert view.renders == len(records)
    return frames(out.getvalue()), out.getvalue()


A_MIGRATION = [
    rec("requested"),
    rec("preflight", expected=0),
    rec("preflight", expected=200 * MB),
    rec("checkpointing", expected=200 * MB),
    rec("streaming", 10 * MB, 200 * MB),
    rec("streaming", 60 * MB, 200 * MB),
    rec("streaming", 110 * MB, 200 * MB),
    rec("restoring", 200 * MB, 200 * MB),
    rec("done", 200 * MB, timings={"downtime_s": 0.42, "total_s": 8.5}),
]


def test_the_bar_shows_phase_bytes_percentage_rate_and_time_left() -> None:
    shown, raw = drive(A_MIGRATION)
    assert raw.startswith(HIDE) and raw.endswith(SHOW)  # the cursor comes back
    assert raw.count(REDRAW) == len(A_MIGRATION)  # redrawn in place, once per record (+ the final frame)
    assert len(shown) == len(A_MIGRATION) + 1 and shown[-1] == shown[-2]
    for frame, record in zip(shown, A_MIGRATION, strict=False):
        assert frame.startswith(f"web → pixel {record['state']}"), frame
    requested, preflight, estimated, checkpointing, s1, s2, s3, restoring, done = shown[:9]
    # Before preflight's estimate: no percentage and no bytes.
    assert "%" not in requested and "%" not in preflight and "MB" not in preflight
    assert "0%" in estimated and "0 bytes / 200.0 MB" in estimated
    assert "0%" in checkpointing and "MB/s" not in checkpointing
    assert "5%" in s1 and "10.0 MB / 200.0 MB" in s1
    assert "MB/s" not in s1 and "left" not in s1  # one sample: no rate yet
    # 50 MB per (fake) second: 140 MB left → 0:03, then 90 MB left → 0:02.
    assert re.search(r"30% +60\.0 MB / 200\.0 MB +50\.0 MB/s +0:03 left", s2), s2
    assert re.search(r"55% +110\.0 MB / 200\.0 MB +50\.0 MB/s +0:02 left", s3), s3
    # Past the stream no rate or time left; the final record has no estimate, the last one is kept.
    assert "100%" in restoring and "MB/s" not in restoring and "left" not in restoring
    assert "100%" in done and "200.0 MB / 200.0 MB" in done and "left" not in done


def test_without_an_estimate_bytes_and_rate_show_without_a_percentage() -> None:
    shown, _ = drive([rec("streaming", 5 * MB, 0), rec("streaming", 25 * MB, 0), rec("streaming", 45 * MB)],
                     step=2.0)
    assert "5.0 MB" in shown[0]
    assert re.search(r"streaming +45\.0 MB +10\.0 MB/s\s*$", shown[2]), shown[2]
    assert not any("%" in frame or "left" in frame or "/ " in frame for frame in shown)


def test_an_estimate_exceeded_stays_at_100_percent() -> None:
    shown, _ = drive([rec("streaming", 90 * MB, 100 * MB), rec("streaming", 130 * MB, 100 * MB)])
    assert "90%" in shown[0]
    assert "100%" in shown[1] and "130.0 MB / 100.0 MB" in shown[1] and "0:00 left" in shown[1]


def test_no_record_no_output_and_stop_is_idempotent() -> None:
    console, out = terminal()
    view = MigrationProgress(console)
    with view:
        pass
    view.stop()
    assert out.getvalue() == ""
    view(rec("preflight"))
    view.stop()
    view.stop()
    assert out.getvalue().count(SHOW) == 1


def test_the_bar_is_stopped_when_the_wait_fails() -> None:
    console, out = terminal()
    with pytest.raises(RuntimeError), MigrationProgress(console) as view:
        view(rec("streaming", 1 * MB, 10 * MB))
        raise RuntimeError("the daemon went away")
    assert out.getvalue().endswith(SHOW)
    assert out.getvalue().rstrip(SHOW).endswith("\n")  # the last frame ends its line


def test_ctrl_c_while_drawing_is_delivered_after_the_frame() -> None:
    reached = False
    with pytest.raises(KeyboardInterrupt), _ctrl_c_held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler would run here, at the latest
        reached = True
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outcome_line() -> None:
    done = rec("done", 268_400_000, timings={"downtime_s": 0.4234, "total_s": 65.2, "checkpoint_s": 0.2})
    assert outcome_line(done) == "web → pixel: done, downtime 0.42s, total 1m05s, 268.4 MB sent"
    rolled = rec("rolled-back", 1 * MB, error="stream: the agent stopped answering", timings={"total_s": 3.0})
    assert outcome_line(rolled) == "web → pixel: rolled-back, total 3.00s, 1.0 MB sent: " \
                                   "stream: the agent stopped answering"
    lazy = rec("done", 268_400_000, timings={"downtime_s": 0.79, "last_page_s": 1.9, "total_s": 2.75})
    assert outcome_line(lazy) == "web → pixel: done, downtime 0.79s, last page 1.90s, total 2.75s, 268.4 MB sent"
    rejected = rec("rejected", error="bind mount /data: its files are on this host")
    assert outcome_line(rejected) == "web → pixel: rejected: bind mount /data: its files are on this host"


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (0.0, "0.00s"), (59.994, "59.99s"), (60.0, "1m00s"),
                                               (3725.4, "1h02m05s")])
def test_fmt_seconds(seconds: float | None, text: str) -> None:
    assert fmt_seconds(seconds) == text


def test_fmt_clock() -> None:
    assert [fmt_clock(s) for s in (-1.0, 7.4, 750.0, 3723.0)] == ["0:00", "0:07", "12:30", "1:02:03"]


LISTED = [
    rec("done", 268_400_000, timings={"downtime_s": 0.42, "total_s": 5.1}, created_at=1_700_000_100.0),
    rec("rolled-back", 12 * MB, id="b" * 32, container_name="db", error="stream: the agent stopped answering",
        timings={"total_s": 75.3}, created_at=1_700_000_050.0),
    rec("rejected", 0, id="c" * 32, container_name="cache", device="tablet",
        error="bind mount /srv: its files are on this host", created_at=1_700_000_000.0),
    rec("streaming", 3 * MB, 10 * MB, id="d" * 32, container_name="queue", created_at=1_700_000_200.0),
]


def plain(renderables: list[Any]) -> str:
    out = io.StringIO()
    print_plain(renderables, out)
    return out.getvalue()


def test_migrations_plain_table_has_every_column() -> None:
    lines = plain([migrations_table(LISTED, plain=True)]).splitlines()
    assert lines[0].split() == ["WHEN", "ID", "CONTAINER", "DEVICE", "STATE", "DOWNTIME", "TOTAL", "SIZE", "REASON"]
    assert len(lines) == 1 + len(LISTED)
    assert all(line == line.rstrip() and "─" not in line and "\x1b" not in line for line in lines)
    done, rolled, rejected, running = lines[1:]
    assert done.split() == [*fmt_when(1_700_000_100.0).split(), ID[:12], "web", "pixel", "done", "0.42s", "5.10s",
                            "268.4", "MB"]
    assert rolled.split()[:9] == [*fmt_when(1_700_000_050.0).split(), "b" * 12, "db", "pixel", "rolled-back", "-",
                                  "1m15s", "12.0"]
    assert rolled.endswith("  stream: the agent stopped answering")
    assert rejected.split()[2:9] == ["c" * 12, "cache", "tablet", "rejected", "-", "-", "-"]
    assert rejected.endswith("  bind mount /srv: its files are on this host")
    assert running.split()[2:7] == ["d" * 12, "queue", "pixel", "streaming", "-"]
    # Aligned: every column starts at the same offset on every line.
    for header in ("ID", "CONTAINER", "STATE"):
        column = lines[0].index(header)
        assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines), header


def test_containers_plain_table_says_where_each_runs_and_since_when() -> None:
    placed = [{"name": "web", "where": "host", "since": 1_700_000_100.0, "migration_id": ID, "from": "pixel"},
              {"name": "db", "where": "pixel", "since": 1_700_000_050.0, "migration_id": "b" * 32, "from": "host"}]
    lines = plain([containers_table(placed, plain=True)]).splitlines()
    assert lines[0].split() == ["NAME", "WHERE", "SINCE", "FROM", "MIGRATION"]
    assert lines[1].split() == ["web", "host", *fmt_when(1_700_000_100.0).split(), "pixel", ID[:12]]
    assert lines[2].split() == ["db", "pixel", *fmt_when(1_700_000_050.0).split(), "host", "b" * 12]


def test_migrations_table_on_a_terminal_has_every_column() -> None:
    console, out = terminal(width=140)
    console.print(migrations_table(LISTED))
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["WHEN", "ID", "CONTAINER", "DEVICE", "STATE", "DOWNTIME", "TOTAL", "SIZE", "REASON"]
    assert set(lines[1]) == {"─"}
    rows = {line.split()[2]: line for line in lines[2:]}  # by short id
    assert rows[ID[:8]].startswith(fmt_when(1_700_000_100.0))
    assert rows[ID[:8]].split()[3:10] == ["web", "pixel", "done", "0.42s", "5.10s", "268.4", "MB"]
    assert rows["b" * 8].split()[3:10] == ["db", "pixel", "rolled-back", "-", "1m15s", "12.0", "MB"]
    assert rows["b" * 8].rstrip().endswith("  stream: the agent stopped answering")
    assert rows["c" * 8].rstrip().endswith("  bind mount /srv: its files are on this host")


def test_on_a_narrow_terminal_the_reasons_go_under_the_table() -> None:
    console, out = terminal(width=80)
    console.print(migrations_table(LISTED))
    text = out.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text  # nothing cut: the date folds over its time
    head, reasons = text.split("\n\n")
    assert head.splitlines()[0].split() == ["WHEN", "ID", "CONTAINER", "DEVICE", "STATE", "DOWNTIME", "TOTAL",
                                            "SIZE"]
    assert "268.4 MB" in head and "rolled-back" in head and "1m15s" in head
    lines = [line.rstrip() for line in reasons.splitlines()]
    assert lines[0].split() == ["ID", "REASON"]
    assert lines[2:] == ["bbbbbbbb  stream: the agent stopped answering",
                         "cccccccc  bind mount /srv: its files are on this host"]


TRANSITIONS: list[dict[str, Any]] = [
    {"state": "requested", "at": 1_700_000_000.0, "detail": ""},
    {"state": "preflight", "at": 1_700_000_000.125, "detail": ""},
    {"state": "checkpointing", "at": 1_700_000_001.5, "detail": ""},
    {"state": "streaming", "at": 1_700_000_002.25, "detail": ""},
    {"state": "rolling-back", "at": 1_700_000_032.5, "detail": "stream: the agent stopped answering"},
    {"state": "rolled-back", "at": 1_700_000_033.0, "detail": "restored at the source"},
]


def shown_record() -> dict[str, Any]:
    return rec("rolled-back", 12 * MB, error="stream: the agent stopped answering", checkpoint_name="acd-3f2a",
               timings={"checkpoint_s": 1.2, "total_s": 33.0}, transitions=TRANSITIONS)


def test_migration_show_lists_fields_and_every_transition_with_its_time() -> None:
    text = plain(migration_detail(shown_record(), plain=True))
    lines = text.splitlines()
    fields = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in lines[:lines.index("")] if " " in line}
    assert fields["id"] == ID
    assert fields["container"] == "web (c0ffeec0ffee)"
    assert fields["from"] == "host" and fields["to"] == "pixel"
    assert fields["state"] == "rolled-back" and fields["origin"] == "api"
    assert fields["requested"] == fmt_when(1_700_000_000.0)
    assert fields["sent"] == "12.0 MB"
    assert "checkpoint name  acd-3f2a" in lines
    assert fields["total"] == "33.00s"
    assert fields["checkpoint"] == "1.20s"
    assert fields["error"] == "stream: the agent stopped answering"
    timeline = lines[lines.index("timeline") + 1:]
    assert timeline[0].split() == ["AT", "ELAPSED", "STATE", "DETAIL"]
    rows = timeline[1:]
    assert len(rows) == len(TRANSITIONS)
    for row, t in zip(rows, TRANSITIONS, strict=True):
        assert row.startswith(fmt_when(t["at"], millis=True)), row
        assert f"{t['at'] - TRANSITIONS[0]['at']:.3f}s" in row
        assert f" {t['state']}" in row
        assert row.endswith(t["detail"] or t["state"])
    assert rows[1].split()[2:4] == ["0.125s", "preflight"]
    assert fmt_when(1_700_000_000.125, millis=True).endswith(".125")


def test_migration_show_on_a_terminal() -> None:
    console, out = terminal(width=140)
    for renderable in migration_detail(shown_record()):
        console.print(renderable)
    text = out.getvalue()
    for t in TRANSITIONS:
        assert fmt_when(t["at"], millis=True) in text and t["state"] in text
    assert "restored at the source" in text and "timeline" in text
