"""The way back's core (aarch64 → x86_64) built from the x86_64 register set the Popcorn runtime leaves: on
this x86_64 host, a two-ISA task notified for x86_64 is dumped, its core is replaced by the one `x86_64_core`
builds from `regs_dst` alone (everything the kernel dumped of its registers dropped), and the host's own CRIU
resumes it in `resume()` with its count. The aarch64 half of the way back is proven on the arm64 device
(tests/agent/test_cross_isa_way_back.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from androcond.criu.compat import task_tree
from androcond.images import Pagemap, pb
from androcond.popcorn.notify import notify_tasks
from androcond.recoder.arch import OPEN_FLAG_BITS, X86_64_REGSET_SIZE, X86Regs, open_flags_for, x86_64_core
from androcond.recoder.elf import read_elf
from androcond.recoder.imageset import ImageSet, RecodeError, write_outputs

from ..images.conftest import find_criu
from .build import build_twoisa
from .conftest import Process, criu_dump, require_tools, wait_until


@pytest.fixture(scope="module")
def twoisa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools()
    return build_twoisa(tmp_path_factory.mktemp("twoisa"))["x86_64"]


def _regset(images: ImageSet, pid: int, binary: Path) -> tuple[bytes, bytes]:
    elf = read_elf(binary)
    name = f"pagemap-{pid}.img"
    pagemap = Pagemap.from_entries(images.read(name).entries, name, 4096)
    with images.path(pagemap.pages_name).open("rb") as pages:
        return (pagemap.read(pages, elf.symbols["regs_dst"].address, X86_64_REGSET_SIZE),
                pagemap.read(pages, elf.symbols["tls_dst"].address, 8))


def test_a_core_built_from_the_x86_64_register_set_resumes_here(twoisa: Path, tmp_path: Path,
                                                               processes: list[Process]) -> None:
    log = tmp_path / "count.log"
    proc = Process([str(twoisa), str(log)])
    processes.append(proc)
    proc.wait_for(lambda: log.exists() and b"count 3 " in log.read_bytes(), "three counts")
    notify_tasks(task_tree(proc.pid), "x86_64", timeout=10)
    criu_dump(proc.pid, tmp_path / "images")
    proc.proc.wait(timeout=10)  # reaped, so its pid is free for the restore
    counted = [line for line in log.read_text().splitlines() if line.startswith("count ")]
    images = ImageSet(tmp_path / "images")
    regset, tls = _regset(images, proc.pid, twoisa)
    core = images.edit(f"core-{proc.pid}.img").entries[0].get(pb.core_entry)
    dumped_ip = core.thread_info.gpregs.ip
    x86_64_core(core, X86Regs.unpack(regset, tls, "the task"))
    assert core.thread_info.gpregs.ip != dumped_ip, "the task resumes in resume(), not where it was dumped"
    write_outputs(images.outputs(), tmp_path / "rebuilt")

    restored = subprocess.run([find_criu(), "restore", "-D", str(tmp_path / "rebuilt"), "-d", "-o", "restore.log"],
                              capture_output=True, text=True, timeout=120, check=False)
    restore_log = tmp_path / "rebuilt" / "restore.log"
    assert restored.returncode == 0, restore_log.read_text(errors="replace")[-2000:]
    last = int(counted[-1].split()[1])
    wait_until(lambda: f"count {last + 2} " in log.read_text(), "counting on after the restore")
    lines = log.read_text().splitlines()
    resumed = [line for line in lines if line.startswith("resumed at count ")]
    assert len(resumed) == 1 and resumed[0].startswith((f"resumed at count {last} on x86_64",
                                                        f"resumed at count {last - 1} on x86_64")), resumed


def test_an_aarch64_register_set_is_not_taken_for_x86_64() -> None:
    regset = (0xAABCBDEADBEAF).to_bytes(8, "little") + bytes(X86_64_REGSET_SIZE - 8)
    with pytest.raises(RecodeError, match="an aarch64 register set: notified for the wrong target"):
        X86Regs.unpack(regset, bytes(8), "task 7")


def test_open_flags_mean_the_same_on_the_other_isa() -> None:
    """A pipe CRIU reopened on the device carries aarch64's O_LARGEFILE (0o400000), which is O_NOFOLLOW on
    x86_64: the host's CRIU then fails to reopen it (ELOOP). The bits that differ move; the rest stay."""
    o_rdwr, o_nonblock, o_cloexec = 0o2, 0o4000, 0o2000000
    assert open_flags_for(0o400000 | o_rdwr, "aarch64", "x86_64") == 0o100000 | o_rdwr
    assert open_flags_for(0o100000 | o_nonblock, "x86_64", "aarch64") == 0o400000 | o_nonblock
    every = sum(OPEN_FLAG_BITS["x86_64"].values()) | o_rdwr | o_nonblock | o_cloexec
    for flags in (0, o_rdwr, every, 0o40000 | o_cloexec, 0o200000 | 0o400000):
        there = open_flags_for(flags, "x86_64", "aarch64")
        assert open_flags_for(there, "aarch64", "x86_64") == flags
