"""The watcher's handling of start events: concurrent starts stamped out of order are all reported; a
reconnect's replay (events handled already) is not; the startup scan's own containers are not reported twice."""

from __future__ import annotations

from typing import Any

from androcond.daemon.watcher import ContainerSeen, Watcher


def start(cid: str, time_ns: int) -> dict[str, Any]:
    return {"Actor": {"ID": cid, "Attributes": {"name": f"c-{cid}", "androcond.migrate": "pixel"}},
            "timeNano": time_ns}


async def test_out_of_order_starts_replays_and_scanned_containers() -> None:
    seen: list[str] = []

    async def on_seen(container: ContainerSeen) -> None:
        seen.append(container.container_id)

    watcher = Watcher("unix:///nonexistent.sock", ["pixel"], on_seen)
    watcher._last_ns = 1_000
    scanned = {"s"}
    # Ten concurrent starts, delivered out of timestamp order (as Docker may under load).
    for cid, when in [("a", 1_005), ("b", 1_003), ("c", 1_004), ("d", 1_003), ("s", 999)]:
        await watcher._handle_event(start(cid, when), scan_ns=1_000, scanned=scanned)
    assert seen == ["a", "b", "c", "d"], "an earlier-stamped start that arrived late was dropped"
    # A reconnect replays from a little before the last event: nothing is reported twice ...
    for cid, when in [("b", 1_003), ("c", 1_004), ("a", 1_005)]:
        await watcher._handle_event(start(cid, when), scan_ns=1_000, scanned=set())
    assert seen == ["a", "b", "c", "d"]
    # ... but a new start of the same container (a restart) is a new event.
    await watcher._handle_event(start("a", 2_000), scan_ns=1_000, scanned=set())
    assert seen == ["a", "b", "c", "d", "a"]
