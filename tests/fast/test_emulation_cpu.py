"""Whether a process's CPU choices survive qemu-x86_64: the emulator's features by version, the facts read
from a small stand-in /proc, and the decision with its advice."""

from __future__ import annotations

from pathlib import Path

import pytest

from androcond.emulation.cpu import (
    SourceCpu,
    cpu_fit,
    cpuinfo_features,
    emulator_features,
    environ_tunables,
    glibc_version,
    masked_features,
    read_source_cpu,
    tunables_advice,
)

# An AVX-512 host (Sapphire Rapids, abridged): what the experiment ran on.
AVX512_FLAGS = ("fpu cx8 cmov sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c abm bmi1 hle avx2 "
                "bmi2 erms rtm avx512f avx512dq avx512cd avx512bw avx512vl xsaveopt xsavec fsrm pni")
AVX512_HOST = cpuinfo_features(f"processor\t: 0\nflags\t\t: {AVX512_FLAGS}\n")
EXPERIMENT_MASK = "-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-RTM,-XSAVEC"


def source(libc: str = "glibc", tunables: str = "", host: frozenset[str] = AVX512_HOST,
           version: tuple[int, int] | None = (2, 31)) -> SourceCpu:
    """By default a glibc older than rseq (2.35): the CPU features alone decide."""
    return SourceCpu(7, "python3", host, libc, tunables, version)  # type: ignore[arg-type]


def test_emulator_features_by_version() -> None:
    qemu10, qemu72 = emulator_features("10.0.2"), emulator_features("7.2.0")
    assert {"AVX", "AVX2", "FMA", "BMI1", "BMI2", "MOVBE", "ERMS", "FSRM", "LZCNT"} <= qemu10
    assert qemu72 == qemu10 - {"FSRM"}
    for offered in (qemu10, qemu72):
        assert not offered & {"AVX512F", "AVX512VL", "RTM", "XSAVEC"}
    assert emulator_features("11.1") == qemu10
    assert emulator_features("9.2.2") == qemu72  # between the verified ones: the older set
    old = emulator_features("7.1.0")
    assert not old & {"AVX", "AVX2", "FMA"} and {"SSE4_2", "POPCNT", "XSAVE"} <= old
    assert emulator_features("") == emulator_features("garbage") == emulator_features("6.2")


def test_cpuinfo_names_are_glibcs() -> None:
    assert {"LZCNT", "SSE3", "SSE4_1", "AVX512VL", "XSAVEC"} <= AVX512_HOST
    assert "ABM" not in AVX512_HOST and cpuinfo_features("no flags here") == frozenset()


def test_tunables_masks() -> None:
    assert masked_features("") == frozenset()
    assert masked_features(f"glibc.malloc.arena_max=2:glibc.cpu.hwcaps={EXPERIMENT_MASK},Prefer_ERMS") == {
        "AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ", "AVX512CD", "RTM", "XSAVEC"}
    assert masked_features("glibc.tune.hwcaps=-AVX2") == {"AVX2"}  # glibc 2.26-2.27's name
    assert masked_features("glibc.cpu.hwcap_mask=-AVX2:glibc.cpu.hwcaps=-,") == frozenset()


def test_unmasked_glibc_on_an_avx512_host_is_refused_with_the_experiments_tunables() -> None:
    fit = cpu_fit(source(), "10.0.2")
    assert not fit.ok
    assert "process 7 (python3)" in fit.reason and "qemu-x86_64 10.0.2" in fit.reason
    assert "AVX512F, AVX512VL, AVX512BW, AVX512DQ, AVX512CD, RTM, XSAVEC" in fit.reason
    assert f"docker run -e GLIBC_TUNABLES=glibc.cpu.hwcaps={EXPERIMENT_MASK} " in fit.reason


@pytest.mark.parametrize("version", ["10.0.2", "7.2.0"])
def test_the_experiments_tunables_let_it_move(version: str) -> None:
    fit = cpu_fit(source(tunables=f"glibc.cpu.hwcaps={EXPERIMENT_MASK}"), version)
    assert fit.ok, fit.reason
    # Tunables steer glibc only: the note says what else may have chosen host-only code.
    assert any("OpenSSL" in note for note in fit.notes)


def test_fsrm_and_erms_are_never_a_refusal() -> None:
    fit = cpu_fit(source(tunables=f"glibc.cpu.hwcaps={EXPERIMENT_MASK}"), "7.2.0")
    assert fit.ok and any("FSRM" in note for note in fit.notes)


def test_a_partial_mask_names_what_is_left_and_keeps_the_other_tunables() -> None:
    fit = cpu_fit(source(tunables="glibc.malloc.arena_max=2:glibc.cpu.hwcaps=-AVX512F,Prefer_ERMS"), "10.0.2")
    assert not fit.ok
    assert "chosen code for AVX512VL, AVX512BW, AVX512DQ, AVX512CD, RTM, XSAVEC," in fit.reason
    assert ("GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.cpu.hwcaps=Prefer_ERMS,"
            f"{EXPERIMENT_MASK} ") in fit.reason


def test_before_7_2_avx2_must_be_masked_too() -> None:
    fit = cpu_fit(source(tunables=f"glibc.cpu.hwcaps={EXPERIMENT_MASK}"), "6.2.0")
    assert not fit.ok
    assert "AVX, AVX2, FMA, BMI1, BMI2, LZCNT, MOVBE" in fit.reason


def test_a_host_without_what_qemu_lacks_is_fine() -> None:
    plain = cpuinfo_features("flags : sse sse2 ssse3 sse4_1 sse4_2 popcnt xsave avx avx2 fma bmi1 bmi2 movbe abm erms")
    assert cpu_fit(source(host=plain), "7.2.0") == cpu_fit(source(host=plain), "10.0.2")
    assert cpu_fit(source(host=plain), "10.0.2").ok and not cpu_fit(source(host=plain), "10.0.2").notes


def test_musl_moves_and_unknown_moves_with_a_warning() -> None:
    musl = cpu_fit(source("musl"), "10.0.2")
    assert musl.ok and not any("libc was not recognised" in n for n in musl.notes)
    unknown = cpu_fit(source("unknown"), "10.0.2")
    assert unknown.ok and any("libc was not recognised" in n and "rolled back" in n for n in unknown.notes)
    assert not cpu_fit(source("glibc-static"), "10.0.2").ok


def test_advice_is_exactly_what_the_emulator_lacks() -> None:
    assert tunables_advice("", frozenset({"RTM", "AVX512F"})) == "glibc.cpu.hwcaps=-AVX512F,-RTM"
    assert tunables_advice("glibc.cpu.hwcaps=-RTM", frozenset({"RTM"})) == "glibc.cpu.hwcaps=-RTM"


# --- the facts, read from a stand-in /proc -----------------------------------------------------------------

GLIBC_MAPS = """\
55d0c0a00000-55d0c0a01000 r-xp 00001000 08:01 100 /usr/bin/python3.11
7f1c2a000000-7f1c2a028000 r--p 00000000 08:01 200 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a400000-7f1c2a401000 r--p 00000000 08:01 201 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7ffc2a000000-7ffc2a021000 rw-p 00000000 00:00 0 [stack]
"""
OLD_GLIBC_MAPS = "7f1c2a000000-7f1c2a028000 r-xp 00000000 08:01 200 /lib/x86_64-linux-gnu/libc-2.31.so\n"
MUSL_MAPS = "7f1c2a000000-7f1c2a028000 r-xp 00000000 08:01 200 /lib/ld-musl-x86_64.so.1\n"
STATIC_MAPS = ("00400000-00401000 r-xp 00000000 08:01 300 /app/server\n"
               "7ffc2a000000-7ffc2a021000 rw-p 0 00:00 0 [stack]\n")


def fake_proc(root: Path, maps: str, environ: bytes = b"PATH=/bin\0", exe: bytes = b"") -> Path:
    process = root / "7"
    process.mkdir(parents=True)
    (root / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {AVX512_FLAGS}\n\nprocessor\t: 1\nflags\t\t: sse\n")
    (process / "comm").write_text("server\n")
    (process / "environ").write_bytes(environ)
    (process / "maps").write_text(maps)
    (process / "exe").write_bytes(exe)  # the real one is a link to the executable
    return root


@pytest.mark.parametrize(("maps", "exe", "libc"), [
    (GLIBC_MAPS, b"", "glibc"), (OLD_GLIBC_MAPS, b"", "glibc"), (MUSL_MAPS, b"", "musl"),
    (STATIC_MAPS, b"\x7fELF" + b"\0" * (3 << 20) + b"GLIBC_TUNABLES\0", "glibc-static"),
    (STATIC_MAPS, b"\x7fELF" + b"\0" * 100 + b"Go build ID", "unknown")])
def test_read_source_cpu_tells_the_libc(tmp_path: Path, maps: str, exe: bytes, libc: str) -> None:
    facts = read_source_cpu(7, fake_proc(tmp_path, maps, exe=exe))
    assert facts.libc == libc
    assert (facts.pid, facts.command, facts.host_features) == (7, "server", AVX512_HOST)


def test_read_source_cpu_reads_the_tunables_it_started_with(tmp_path: Path) -> None:
    environ = b"HOME=/root\0GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-RTM\0X_GLIBC_TUNABLES=no\0"
    facts = read_source_cpu(7, fake_proc(tmp_path, GLIBC_MAPS, environ))
    assert facts.tunables == "glibc.cpu.hwcaps=-AVX512F,-RTM" and facts.masked == {"AVX512F", "RTM"}
    assert read_source_cpu(7, fake_proc(tmp_path / "other", GLIBC_MAPS)).tunables == ""


def test_a_static_glibc_marker_past_the_limit_is_not_read(tmp_path: Path) -> None:
    from androcond.emulation.cpu import is_static_glibc

    exe = tmp_path / "exe"
    exe.write_bytes(b"\0" * 4096 + b"FATAL: kernel too old")
    assert is_static_glibc(exe)
    assert not is_static_glibc(exe, limit=4096)


@pytest.mark.parametrize("version", [(2, 36), None])
def test_a_glibc_that_registers_rseq_must_be_told_not_to(version: tuple[int, int] | None) -> None:
    """qemu has no rseq; glibc >= 2.35 (or one whose version is not known) registers it at start-up."""
    fit = cpu_fit(source(tunables=f"glibc.cpu.hwcaps={EXPERIMENT_MASK}", version=version), "10.0.2")
    assert not fit.ok and "registers rseq" in fit.reason
    assert f"GLIBC_TUNABLES=glibc.cpu.hwcaps={EXPERIMENT_MASK}:glibc.pthread.rseq=0" in fit.reason
    told = cpu_fit(source(tunables=f"glibc.cpu.hwcaps={EXPERIMENT_MASK}:glibc.pthread.rseq=0", version=version),
                   "10.0.2")
    assert told.ok, told.reason


def test_musl_and_old_glibc_have_no_rseq_to_switch_off() -> None:
    assert not source(libc="musl", version=None).rseq_registered
    assert not source(version=(2, 34)).rseq_registered
    assert source(version=(2, 35)).rseq_registered


def test_the_glibc_version_is_read_from_its_banner(tmp_path: Path) -> None:
    libc = tmp_path / "libc.so.6"
    libc.write_bytes(b"\0" * 70000 + b"GNU C Library (Debian GLIBC 2.36-9+deb12u7) stable release version 2.36.\n")
    assert glibc_version(libc) == (2, 36)
    libc.write_bytes(b"no banner here")
    assert glibc_version(libc) is None


def test_tunables_glibc_cut_in_place_are_read_whole() -> None:
    """glibc leaves a NUL where each ':' of GLIBC_TUNABLES was (seen with 2.36 on this machine)."""
    environ = (b"PATH=/bin\0GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-RTM\0glibc.pthread.rseq=0\0"
               b"glibc.malloc.arena_max=2\0HOME=/root\0")
    assert environ_tunables(environ) == "glibc.cpu.hwcaps=-AVX512F,-RTM:glibc.pthread.rseq=0:glibc.malloc.arena_max=2"
    assert environ_tunables(b"PATH=/bin\0") == ""
