"""The device's side of an emulated restore, in its pure parts: the mount it adds and the restorer's word read
from the FIFO (a real FIFO in a temporary directory; the start itself is proven on the arm64 bed)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from androcond.agent import emulated
from androcond.protocol.emulation import EMULATOR, MOUNT, RESTORER, STATUS, STUB_MOUNT, STUB_SOCKET


def test_the_images_are_mounted_read_only_beside_the_containers_own_binds(tmp_path: Path) -> None:
    body = emulated.mounted({"Image": "x", "HostConfig": {"Binds": ["/srv:/srv"]}}, tmp_path)
    assert body["HostConfig"]["Binds"] == ["/srv:/srv", f"{tmp_path}:{MOUNT}:ro"]


def test_the_stub_gets_a_writable_tmpfs_of_the_containers_own() -> None:
    body = emulated.mounted({"Image": "x", "HostConfig": {"Tmpfs": {"/run": ""}}}, Path("/spool/m1"), stub=True)
    assert body["HostConfig"]["Binds"] == [f"/spool/m1:{MOUNT}:ro"]
    assert body["HostConfig"]["Tmpfs"] == {"/run": "", STUB_MOUNT: emulated.STUB_TMPFS}
    assert "mode=1777" in emulated.STUB_TMPFS  # whoever the container's user is, it makes the socket
    assert emulated.stub_socket(4242) == Path(f"/proc/4242/root{STUB_MOUNT}/{STUB_SOCKET}")
    assert "Tmpfs" not in emulated.mounted({"Image": "x"}, Path("/spool/m1"))["HostConfig"]


def test_any_user_may_read_the_files_and_write_the_status(tmp_path: Path) -> None:
    qemu = tmp_path / "qemu"  # the device's own emulator
    qemu.write_bytes(b"\x7fELF")
    qemu.chmod(0o750)
    tmp_path = tmp_path / "images"
    tmp_path.mkdir()
    (tmp_path / RESTORER).write_bytes(b"\x7fELF")
    (tmp_path / "pages-1.img").write_bytes(b"")
    emulated.place_emulator(qemu, tmp_path)
    os.chmod(tmp_path / "pages-1.img", 0o600)
    emulated.open_to_all(tmp_path)
    assert stat.S_IMODE((tmp_path / RESTORER).stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "pages-1.img").stat().st_mode) == 0o644
    fifo = (tmp_path / STATUS).stat()
    assert stat.S_IMODE((tmp_path / EMULATOR).stat().st_mode) == 0o750, "the device's emulator is not touched"
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o666


async def test_the_restorers_word_is_its_first_line(tmp_path: Path) -> None:
    emulated.open_to_all(tmp_path)
    with emulated._status_fifo(tmp_path / STATUS) as fd:
        reading = asyncio.ensure_future(emulated._read_status(fd))
        await asyncio.sleep(0)
        assert not reading.done(), "no end-of-file before the restorer writes"

        def restorer() -> None:
            writer = os.open(tmp_path / STATUS, os.O_WRONLY)
            os.write(writer, b"error: mmap 0x7f0000 EEXIST\nmore\n")
            os.close(writer)

        await asyncio.to_thread(restorer)
        assert await asyncio.wait_for(reading, 10) == "error: mmap 0x7f0000 EEXIST"
