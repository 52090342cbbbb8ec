"""Repeated scalars that CRIU declares packed are written back packed: CRIU's parser (protobuf-c) refuses them
unpacked, and CRIU 4.2.1 failed to restore a core image whose xsave `cet` we had re-encoded unpacked."""

from __future__ import annotations

from androcond.images import pb
from androcond.images.framing import Entry


def test_cet_is_written_packed_after_an_edit() -> None:
    core = pb.core_entry(mtype=1)
    core.thread_info.fpregs.xsave.cet.extend([8, 0, 16, 0])
    entry = Entry.from_message(core)
    core.tc.task_state = 1  # any edit: the whole message is encoded again
    entry.set_message(core)
    xsave = core.thread_info.fpregs.xsave.SerializeToString()
    assert b"\x4a\x04\x08\x00\x10\x00" in xsave  # field 9, length-delimited: 4 varints in one run
    assert xsave.count(b"\x48") == 0  # never field 9 as single varints
    assert pb.core_entry.FromString(entry.encode(force=True)).thread_info.fpregs.xsave.cet == [8, 0, 16, 0]
