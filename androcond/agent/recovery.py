"""Settling stale outcomes: what an agent killed mid-migration left "receiving" or "restoring".

Done when an agent starts (for every record) and when a query or a Begin asks about one. The device engine
decides: a restore that came up is "running"; anything else is removed and recorded as failed or aborted, so
the daemon gets a final answer instead of "restoring" forever.
"""

from __future__ import annotations

import asyncio

from ..criu.leftovers import remove_extractions_of
from ..errors import AndrocondError
from ..logging import get_logger
from ..protocol.codes import OutcomeState
from .device import DeviceEngine
from .lazy_pages import kill_group
from .outcomes import OutcomeRecord, OutcomeStore

log = get_logger(__name__)

RESTORE_DIED = "the agent stopped during the restore; the container did not come up"
RECEIVE_DIED = "the agent stopped while receiving the migration's files"
PAGING_DIED = ("the agent stopped before every page of the post-copy restore had arrived; the container was "
               "removed")


async def settle_if_stale(store: OutcomeStore, device: DeviceEngine, record: OutcomeRecord) -> OutcomeRecord:
    """The record itself if it is not stale; else the settled record (written to the store)."""
    if not record.is_stale(store.owner):
        return record
    before = record.state
    cid = record.container_id
    pager = record.pager
    if pager is not None:
        # Post-copy that did not see its last page: the container (blocked on its missing pages while the
        # keeper lives) is removed first, and only then the keeper, so no task ever reads a missing page.
        if cid:
            await device.discard(cid)
        kill_group(pager)
        settled = OutcomeRecord(record.migration_id, OutcomeState.FAILED, error=PAGING_DIED,
                                bytes_received=record.bytes_received)
    elif before == OutcomeState.RESTORING and cid and await device.is_running(cid):
        settled = OutcomeRecord(record.migration_id, OutcomeState.RUNNING, cid, bytes_received=record.bytes_received)
        left = await device.release_restorer(cid)  # a restorer's start the dead agent did not finish
        if left:
            log.warning("the settled container runs, but cannot be checkpointed until it is restarted",
                        container_id=cid, why=left)
    else:
        if cid:
            await device.discard(cid)
        if before == OutcomeState.RESTORING:
            settled = OutcomeRecord(record.migration_id, OutcomeState.FAILED, error=RESTORE_DIED,
                                    bytes_received=record.bytes_received)
        else:
            removed = "; the prepared container was removed" if cid else ""
            settled = OutcomeRecord(record.migration_id, OutcomeState.ABORTED, error=RECEIVE_DIED + removed,
                                    bytes_received=record.bytes_received)
    await store.put(settled)
    # Whatever the answer, the spooled images are of no more use (CRIU or the restorer read them, or never will),
    # nor is containerd's extraction of the checkpoint, which it never removes and whose nonce died with the agent.
    await device.remove_spooled(record.migration_id, cid)
    extracted = await asyncio.to_thread(remove_extractions_of, record.migration_id)
    if extracted:
        log.info("removed containerd's copy of the checkpoint", migration_id=record.migration_id,
                 paths=[str(p) for p in extracted])
    log.warning("settled a stale outcome", migration_id=record.migration_id, was=before, now=settled.state,
                container_id=cid, dead_owner_pid=record.owner_pid)
    return settled


async def settle_all(store: OutcomeStore, device: DeviceEngine) -> int:
    """Settle every stale record in the store; returns how many were settled. One that cannot be settled
    now is logged and left for a later query (the agent starts anyway)."""
    settled = 0
    for record in await store.in_flight():
        try:
            if (await settle_if_stale(store, device, record)) is not record:
                settled += 1
        except (AndrocondError, OSError) as exc:
            log.error("could not settle a stale outcome", migration_id=record.migration_id, error=str(exc))
    return settled
