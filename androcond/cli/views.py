"""What `androcond migrate --wait`, `androcond migrations` and `androcond migrations show` draw (rich).

Everything here takes API records (the JSON of GET /migrations and GET /migrations/{id}) and a rich Console,
so the fast tests drive it with canned records and a Console writing to a StringIO.
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from types import FrameType, TracebackType
from typing import IO, Any

from rich import box
from rich.console import Console, ConsoleOptions, JustifyMethod, RenderableType, RenderResult
from rich.filesize import decimal
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

_OK = "done"  # the one outcome without an error worth showing
_STATE_STYLE = {"done": "green", "rolled-back": "yellow", "rolling-back": "yellow", "rejected": "red",
                "failed": "bold red"}
# Rich renders a table to a non-terminal at this width: wide enough that no line wraps (scripts read them).
_PLAIN_WIDTH = 10_000


# -- small formats ---------------------------------------------------------------------------------------------

def fmt_bytes(n: int) -> str:
    """Decimal units, as `du --si` and rich's transfer columns do: 268.4 MB."""
    return decimal(n)


def _on_wire(record: dict[str, Any]) -> str:
    """" (91.2 MB on the wire)" when compression made the link carry less than was read; else nothing."""
    sent, wire = int(record.get("bytes_sent") or 0), int(record.get("wire_bytes") or 0)
    return f" ({fmt_bytes(wire)} on the wire)" if 0 < wire < sent else ""


def fmt_seconds(seconds: float | None) -> str:
    """0.42s under a minute, 2m05s, 1h02m03s: a downtime and a total read at a glance."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def fmt_clock(seconds: float) -> str:
    """A time left: 0:07, 12:30, 1:02:03."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_when(epoch: float, *, millis: bool = False) -> str:
    """A journal timestamp in the reader's local time."""
    when = datetime.fromtimestamp(epoch).astimezone()
    return when.strftime("%Y-%m-%d %H:%M:%S") + (f".{when.microsecond // 1000:03d}" if millis else "")


def _timing(record: dict[str, Any], name: str) -> float | None:
    value = (record.get("timings") or {}).get(name)
    return float(value) if isinstance(value, int | float) else None


def outcome_line(record: dict[str, Any]) -> str:
    """The last line of `migrate --wait`: outcome, downtime and total time, or the error."""
    parts = [f"{record['container_name']} → {record['device']}: {record['state']}"]
    downtime, total = _timing(record, "downtime_s"), _timing(record, "total_s")
    if downtime is not None:
        parts.append(f"downtime {fmt_seconds(downtime)}")
    last_page = _timing(record, "last_page_s")
    if last_page is not None:  # post-copy: the memory arrived after the resume
        parts.append(f"last page {fmt_seconds(last_page)}")
    if total is not None:
        parts.append(f"total {fmt_seconds(total)}")
    if record.get("bytes_sent"):
        parts.append(f"{fmt_bytes(int(record['bytes_sent']))} sent{_on_wire(record)}")
    line = ", ".join(parts)
    if record["state"] != _OK and record.get("error"):
        line += f": {record['error']}"
    return line


# -- the progress bar of `migrate --wait` ------------------------------------------------------------------------

def _phase(task: Task) -> str:
    return str(task.fields.get("phase", ""))


class _BarColumn(BarColumn):
    """Empty until the total is known: rich's pulse renders as a full bar without colours, which reads as done."""

    def render(self, task: Task) -> ProgressBar:
        return ProgressBar(total=max(0.0, task.total) if task.total is not None else 1.0,
                           completed=max(0.0, task.completed) if task.total is not None else 0.0,
                           width=None if self.bar_width is None else max(1, self.bar_width),
                           pulse=False, animation_time=task.get_time(), style=self.style,
                           complete_style=self.complete_style, finished_style=self.finished_style,
                           pulse_style=self.pulse_style)


class _PercentColumn(ProgressColumn):
    """Only once preflight's estimate is known: before it a percentage would be a guess."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{task.percentage:3.0f}%", style="progress.percentage")


class _BytesColumn(ProgressColumn):
    """Bytes sent, of the expected total when known (the estimate may be exceeded: shown as is)."""

    def render(self, task: Task) -> Text:
        sent = int(task.completed)
        if task.total is None:
            return Text(fmt_bytes(sent) if sent else "", style="progress.download")
        return Text(f"{fmt_bytes(sent)} / {fmt_bytes(int(task.total))}", style="progress.download")


class _RateColumn(ProgressColumn):
    """The transfer rate while streaming; in other phases no byte moves and an old rate would mislead."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        if _phase(task) != "streaming" or not speed:
            return Text("")
        return Text(f"{fmt_bytes(int(speed))}/s", style="progress.data.speed")


class _TimeLeftColumn(ProgressColumn):
    """Time left of the stream at the current rate; needs both the estimate and a rate."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        if _phase(task) != "streaming" or task.total is None or not speed:
            return Text("")
        left = max(0.0, task.total - task.completed) / speed
        return Text(f"{fmt_clock(left)} left", style="progress.remaining")


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold Ctrl-C while rich writes to the terminal, then deliver it.

    A KeyboardInterrupt in the middle of a frame would leave half a line, or the cursor hidden. Only the main
    thread can swap signal handlers; elsewhere this does nothing (no signal is delivered there anyway).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        caught.append((signum, frame))

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(*caught[0])  # asyncio's handler (cancel the main task) or Python's (raise)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


class MigrationProgress:
    """A rich progress bar fed with API records: phase, bytes of the expected total, percentage, rate, time left.

    Use as a context manager: the bar appears with the first record, and on exit (whatever ends the wait,
    Ctrl-C included) it is stopped: the last frame stays as a finished line and the cursor comes back.
    Refreshed on each record, without rich's refresh thread: records arrive once per poll anyway, and a thread
    drawing while Ctrl-C unwinds the main one could leave half a frame.
    """

    def __init__(self, console: Console, *, get_time: Callable[[], float] | None = None) -> None:
        self.console = console
        self.renders = 0
        self._progress = Progress(
            TextColumn("{task.description}"),
            TextColumn("{task.fields[phase]:<13}", style="bold"),
            _BarColumn(bar_width=24),
            _PercentColumn(),
            _BytesColumn(),
            _RateColumn(),
            _TimeLeftColumn(),
            console=console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
            get_time=get_time or time.monotonic,
        )
        self._task: TaskID | None = None
        self._live = False

    def __enter__(self) -> MigrationProgress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Idempotent; a no-op if no record came."""
        if not self._live:
            return
        with _ctrl_c_held():
            self._live = False
            self._progress.stop()

    def __call__(self, record: dict[str, Any]) -> None:
        """The on_update callback of :func:`androcond.cli.client.wait_for`."""
        self.update(record)

    def update(self, record: dict[str, Any]) -> None:
        sent = int(record.get("bytes_sent") or 0)
        # The estimate is served only while the migration runs: the last one is kept for the final frame.
        expected = int(record.get("bytes_expected") or 0)
        with _ctrl_c_held():
            if self._task is None:
                self._task = self._progress.add_task(
                    f"{record['container_name']} → {record['device']}", total=None, phase=record["state"])
            # Pass a total only when it changes: rich forgets the rate's samples on every new total.
            current = self._progress.tasks[0].total
            total = float(expected) if expected and expected != current else None
            self._progress.update(self._task, completed=sent, total=total, phase=record["state"])
            if not self._live:
                self._live = True
                self._progress.start()  # draws the first frame
            else:
                self._progress.refresh()
            self.renders += 1


# -- `androcond migrations` and `androcond migrations show` ------------------------------------------------------

def _styled_state(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("WHEN", "left"), ("ID", "left"), ("CONTAINER", "left"), ("DEVICE", "left"), ("STATE", "left"),
    ("DOWNTIME", "right"), ("TOTAL", "right"), ("SIZE", "right"))
# Below this width a reason column would be folded into a ribbon: the reasons go under the table instead.
_REASON_MIN = 30


class MigrationsTable:
    """`androcond migrations`: one row per migration: when, id, container, device, state, downtime, total time,
    size, and the reason of a failure or a refusal.

    plain: for a pipe or a file: no box, no styles, one line per migration, the reason last. On a terminal
    too narrow for a readable reason column, the reasons are listed under the table by migration id.
    """

    def __init__(self, records: Sequence[dict[str, Any]], *, plain: bool = False) -> None:
        self.records = list(records)
        self.plain = plain
        # Enough to tell 200 migrations apart (`migrations show` takes a prefix); room on an 80-column terminal.
        self.id_width = 12 if plain else 8

    def table(self, *, with_reason: bool) -> Table:
        # Columns two blanks apart either way (box=None has no divider; SIMPLE_HEAD's is a blank).
        table = Table(box=None if self.plain else box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                      collapse_padding=not self.plain, header_style="" if self.plain else "bold")
        for name, justify in _COLUMNS:
            # On a terminal WHEN may fold at its space (date above time); every other column stays whole.
            table.add_column(name, justify=justify, no_wrap=self.plain or name != "WHEN",
                             min_width=10 if name == "WHEN" else None)
        if with_reason:
            # Wrapped where needed: rich gives it the width the others leave.
            table.add_column("REASON", overflow="fold")
        for r in self.records:
            sent = int(r.get("bytes_sent") or 0)
            cells: list[str | Text] = [
                fmt_when(float(r["created_at"])), str(r["id"])[:self.id_width], str(r["container_name"]),
                str(r.get("device") or "-"), _styled_state(str(r["state"])),
                fmt_seconds(_timing(r, "downtime_s")), fmt_seconds(_timing(r, "total_s")),
                fmt_bytes(sent) if sent else "-"]
            if with_reason:
                cells.append(str(r.get("error") or ""))
            table.add_row(*cells)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.plain:
            yield self.table(with_reason=True)
            return
        narrow = self.table(with_reason=False)
        if Measurement.get(console, options, narrow).maximum + _REASON_MIN <= options.max_width:
            yield self.table(with_reason=True)
            return
        yield narrow
        failed = [r for r in self.records if r.get("error")]
        if failed:
            yield Text("")
            reasons = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                            header_style="bold")
            reasons.add_column("ID", no_wrap=True)
            reasons.add_column("REASON", overflow="fold")
            for r in failed:
                style = _STATE_STYLE.get(str(r["state"]), "")
                reasons.add_row(str(r["id"])[:self.id_width], Text(str(r["error"]), style=style))
            yield reasons


def migrations_table(records: Sequence[dict[str, Any]], *, plain: bool = False) -> MigrationsTable:
    return MigrationsTable(records, plain=plain)


def containers_table(containers: Sequence[dict[str, Any]], *, plain: bool = False) -> Table:
    """`androcond containers`: where each container androcond moved runs now."""
    table = Table(box=None if plain else box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=not plain, header_style="" if plain else "bold")
    for column in ("NAME", "WHERE", "SINCE", "FROM", "MIGRATION"):
        table.add_column(column, no_wrap=True)
    for c in containers:
        table.add_row(str(c["name"]), str(c["where"]), fmt_when(float(c["since"])), str(c.get("from") or "host"),
                      str(c["migration_id"])[:12])
    return table


def migration_detail(record: dict[str, Any], *, plain: bool = False) -> list[RenderableType]:
    """`migrations show`: the record's fields, then the timeline of its states from the journal (plain: as in
    :func:`migrations_table`)."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column(overflow="fold")
    container_id = str(record.get("container_id") or "")
    rows: list[tuple[str, str | Text]] = [
        ("id", str(record["id"])),
        ("container", f"{record['container_name']} ({container_id[:12]})" if container_id
         else str(record["container_name"])),
        ("from", str(record.get("from") or record.get("source") or "host")),
        ("to", record.get("device") or "-"),
        ("state", _styled_state(record["state"])),
        ("origin", str(record.get("origin", ""))),
        ("requested", fmt_when(float(record["created_at"]))),
        ("updated", fmt_when(float(record["updated_at"]))),
        ("sent", fmt_bytes(int(record.get("bytes_sent") or 0)) + _on_wire(record)),
    ]
    if record.get("bytes_expected"):
        rows.append(("expected", fmt_bytes(int(record["bytes_expected"]))))
    if record.get("keep_source"):
        rows.append(("keep source", "yes"))
    if record.get("checkpoint_name"):
        rows.append(("checkpoint name", str(record["checkpoint_name"])))
    if record.get("target_container_id"):
        rows.append(("on the device", str(record["target_container_id"])[:12]))
    for name, seconds in sorted((record.get("timings") or {}).items()):
        rows.append((name.removesuffix("_s").replace("_", " "), fmt_seconds(float(seconds))))
    if record.get("error"):
        rows.append(("error", Text(str(record["error"]), style="red")))
    for name, value in rows:
        fields.add_row(name, value)

    timeline = Table(title="timeline", title_justify="left", box=None if plain else box.SIMPLE_HEAD,
                     show_edge=False, pad_edge=False, collapse_padding=not plain,
                     header_style="" if plain else "bold")
    timeline.add_column("AT", no_wrap=True)
    timeline.add_column("ELAPSED", justify="right", no_wrap=True)
    timeline.add_column("STATE", no_wrap=True)
    timeline.add_column("DETAIL", overflow="fold")
    transitions = record.get("transitions") or []
    start = float(transitions[0]["at"]) if transitions else 0.0
    for t in transitions:
        at = float(t["at"])
        timeline.add_row(fmt_when(at, millis=True), f"{at - start:.3f}s", _styled_state(str(t["state"])),
                         str(t.get("detail") or ""))
    return [fields, Text(""), timeline]


def plain_console(file: IO[str]) -> Console:
    """A console for a pipe or a file: no colours, no control codes, and wide enough that nothing wraps."""
    return Console(file=file, width=_PLAIN_WIDTH, color_system=None, force_terminal=False, soft_wrap=False,
                   highlight=False, emoji=False, markup=False)


def print_plain(renderables: Sequence[RenderableType], file: IO[str]) -> None:
    """Render for a non-terminal, trailing blanks stripped (rich pads every cell to its column's width)."""
    buffer = io.StringIO()
    console = plain_console(buffer)
    for renderable in renderables:
        console.print(renderable)
    for line in buffer.getvalue().splitlines():
        print(line.rstrip(), file=file)
