"""Can a live x86_64 process go on under a device's qemu-x86_64? Its CPU features decide.

glibc picks its string and math functions (IFUNCs) and ld.so its lazy-binding trampoline once, at start-up,
from the CPU it starts on. A process that chose AVX-512 code on the host dies with SIGILL at its next call of
such a function under an emulator that lacks AVX-512; no restore can undo that choice. So the choice must be
known before anything is frozen: from the host's CPU flags, the GLIBC_TUNABLES the process started with, and
which libc it runs. Pure decisions on facts read from /proc (`read_source_cpu`), so that they test fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Every qemu-x86_64 TCG offers the x86-64-v2 level (SSE up to 4.2, POPCNT, CX16) and XSAVE. The experiment
# (EMULATION.md, "What it took" 1) resumed glibc processes under qemu 7.2 that had chosen their functions on an
# AVX-512 host with only AVX-512, RTM and XSAVEC masked: every other feature glibc chose there was emulated.
BASELINE = frozenset({"SSE", "SSE2", "SSE3", "SSSE3", "SSE4_1", "SSE4_2", "POPCNT", "CMOV", "CX8", "CX16",
                      "XSAVE"})
# qemu 7.2 brought AVX, AVX2, FMA (and F16C, VAES) to TCG: "Anything less than qemu 7.2 does not have AVX or
# AVX2 support" (nanovms wiki, "qemu"); docker/for-mac#6620 points at qemu issue #164 (TCG lacks AVX) closed for
# 7.2 (wiki.qemu.org/ChangeLog/7.2). What 7.2 and 10 offer the guest was read on the bed's arm64 device
# (EMULATION.md, "What differs on arm64", CPU features): 10 offers AVX, AVX2, FMA, BMI1/2, MOVBE, ERMS, FSRM,
# LZCNT; 7.2 the same minus FSRM; neither AVX-512, RTM or XSAVEC.
QEMU_7_2 = BASELINE | {"AVX", "AVX2", "FMA", "BMI1", "BMI2", "MOVBE", "ERMS", "LZCNT"}
QEMU_10 = QEMU_7_2 | {"FSRM"}

# The features glibc's x86_64 IFUNC selectors and ld.so's trampolines dispatch on whose instructions the
# emulator must then execute (sysdeps/x86_64/multiarch/ifunc-impl-list.c, sysdeps/x86/cpu-features.c), in the
# order the advice lists them. All are names glibc.cpu.hwcaps accepts (sysdeps/x86/cpu-tunables.c).
GLIBC_DISPATCH = ("AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ", "AVX512CD", "AVX512ER", "AVX512PF", "RTM",
                  "XSAVEC", "XSAVE", "AVX", "AVX2", "FMA", "FMA4", "BMI1", "BMI2", "LZCNT", "MOVBE",
                  "SSSE3", "SSE4_1", "SSE4_2", "POPCNT")
# Features glibc only tunes by: ERMS and FSRM choose `rep movsb` paths and thresholds, and `rep movsb` runs on
# every x86_64, so an emulator without them is slower, never killed.
GLIBC_HINTS = frozenset({"ERMS", "FSRM"})

# /proc/cpuinfo names that differ from glibc's (and CPUID's).
_CPUINFO_NAMES = {"abm": "LZCNT", "pni": "SSE3", "cx16": "CX16", "sse4_1": "SSE4_1", "sse4_2": "SSE4_2"}
# glibc 2.26-2.27 spelt the namespace glibc.tune (renamed glibc.cpu in 2.28).
_HWCAPS_TUNABLES = ("glibc.cpu.hwcaps", "glibc.tune.hwcaps")
_VERSION = re.compile(r"^(\d+)\.(\d+)")

LibcKind = Literal["glibc", "glibc-static", "musl", "unknown"]
# A static glibc program holds the tunables' names (glibc >= 2.26) and this start-up message.
_STATIC_GLIBC_MARKERS = (b"GLIBC_TUNABLES", b"FATAL: kernel too old")
EXE_SCAN_LIMIT = 64 << 20  # bytes of an executable searched for a static glibc's markers
_CHUNK = 1 << 20


RSEQ_OFF = ("glibc.pthread.rseq", "0")
_GLIBC_BANNER = re.compile(rb"GNU C Library [^\n]{0,120}?release version (\d+)\.(\d+)")


def emulator_features(version: str) -> frozenset[str]:
    """The x86 features (glibc's names) a qemu-x86_64 of `version` offers the guest. A version between the
    two verified ones gets the older set; an unreadable one the baseline: fewer features only means that more
    processes are asked to start with features masked, never that one is let through to die."""
    match = _VERSION.match(version.strip())
    if match is None:
        return BASELINE
    major, minor = int(match[1]), int(match[2])
    if major >= 10:
        return QEMU_10
    if (major, minor) >= (7, 2):
        return QEMU_7_2
    return BASELINE


@dataclass(frozen=True)
class SourceCpu:
    pid: int
    command: str  # /proc/PID/comm
    host_features: frozenset[str]  # the host CPU's flags, in glibc's names (AVX512F, LZCNT, ...)
    libc: LibcKind
    tunables: str = ""  # GLIBC_TUNABLES as the process started with it ("" when unset)
    glibc_version: tuple[int, int] | None = None  # from its libc's banner; None when not known

    @property
    def rseq_registered(self) -> bool:
        """glibc 2.35 and later register every thread's rseq area with the kernel unless told not to; qemu
        has no rseq, and after the restore glibc aborts at the next pthread_create ("rseq registration
        failed"). Assumed registered when the version is not known."""
        if self.libc not in ("glibc", "glibc-static") or RSEQ_OFF in _tunable_items(self.tunables):
            return False
        return self.glibc_version is None or self.glibc_version >= (2, 35)

    @property
    def masked(self) -> frozenset[str]:
        """The features its GLIBC_TUNABLES hide from glibc (glibc.cpu.hwcaps=-X,-Y)."""
        return masked_features(self.tunables)


@dataclass(frozen=True)
class Fit:
    ok: bool
    reason: str = ""  # why not, and how to start the container so that it can move
    notes: tuple[str, ...] = ()  # what a move should still log


def cpuinfo_features(text: str) -> frozenset[str]:
    """The flags of /proc/cpuinfo's first processor, in glibc's names."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(_CPUINFO_NAMES.get(flag, flag.upper()) for flag in value.split())
    return frozenset()


def _tunable_items(tunables: str) -> list[tuple[str, str]]:
    """GLIBC_TUNABLES is `name=value:name=value`; hwcaps values hold commas, never colons."""
    items = []
    for item in tunables.split(":"):
        name, sep, value = item.partition("=")
        if sep:
            items.append((name.strip(), value.strip()))
    return items


def masked_features(tunables: str) -> frozenset[str]:
    masked: set[str] = set()
    for name, value in _tunable_items(tunables):
        if name in _HWCAPS_TUNABLES:
            masked.update(word[1:] for word in value.split(",") if word.startswith("-") and len(word) > 1)
    return frozenset(masked)


def tunables_advice(tunables: str, masks: frozenset[str], rseq_off: bool = False) -> str:
    """GLIBC_TUNABLES that keep what the process already sets and mask `masks` too (and switch rseq off)."""
    kept = [(name, value) for name, value in _tunable_items(tunables) if name not in _HWCAPS_TUNABLES
            and not (rseq_off and name == RSEQ_OFF[0])]
    hwcaps = [word for name, value in _tunable_items(tunables) if name in _HWCAPS_TUNABLES
              for word in value.split(",") if word and word.lstrip("-") not in masks]
    hwcaps += [f"-{feature}" for feature in GLIBC_DISPATCH if feature in masks]
    caps = [f"glibc.cpu.hwcaps={','.join(hwcaps)}"] if hwcaps else []
    rseq = ["=".join(RSEQ_OFF)] if rseq_off else []
    return ":".join([f"{name}={value}" for name, value in kept] + caps + rseq)


def cpu_fit(source: SourceCpu, emulator_version: str) -> Fit:
    """May `source` go on under qemu-x86_64 `emulator_version`? Refused when its glibc may have chosen code
    for a feature the emulator lacks."""
    offered = emulator_features(emulator_version)
    who = f"process {source.pid} ({source.command})"
    qemu = f"qemu-x86_64 {emulator_version or '(version unknown)'}"
    lacking = frozenset(f for f in GLIBC_DISPATCH if f in source.host_features and f not in offered)
    notes: list[str] = []
    if lacking:
        # Tunables steer glibc only: code that reads CPUID itself (OpenSSL, BLAS, JITs) may still choose them.
        notes.append(f"{who}: this host offers {', '.join(sorted(lacking))}, which {qemu} does not emulate; "
                     "code that chooses by CPUID itself (OpenSSL, BLAS, JIT compilers) may have used them")
    if source.libc == "musl":
        return Fit(True, notes=tuple(notes))  # musl has no IFUNCs: its functions run on any x86_64
    if source.libc == "unknown":
        notes.append(f"{who}: its libc was not recognised, so its CPU choices are not known; if it dies "
                     "under the emulator the move is rolled back")
        return Fit(True, notes=tuple(notes))
    chosen = frozenset(f for f in GLIBC_DISPATCH if f in source.host_features) - source.masked
    missing = [f for f in GLIBC_DISPATCH if f in chosen and f not in offered]
    hints = sorted(f for f in GLIBC_HINTS if f in source.host_features and f not in offered)
    if hints:
        notes.append(f"{who}: glibc may use {', '.join(hints)} paths, slower but correct under {qemu}")
    rseq = source.rseq_registered
    if not missing and not rseq:
        return Fit(True, notes=tuple(notes))
    advice = tunables_advice(source.tunables, lacking, rseq_off=rseq)
    why = []
    if missing:
        why.append(f"its glibc may have chosen code for {', '.join(missing)}, which {qemu} does not emulate "
                   "(it would die of SIGILL after the move)")
    if rseq:
        why.append(f"its glibc ({_version_text(source.glibc_version)}) registers rseq, which qemu-x86_64 lacks "
                   "(glibc would abort at its next new thread)")
    reason = (f"{who}: {'; and '.join(why)}; start the container with "
              f"`docker run -e GLIBC_TUNABLES={advice} ...` so that it can move emulated")
    return Fit(False, reason, tuple(notes))


def _version_text(version: tuple[int, int] | None) -> str:
    return f"{version[0]}.{version[1]}" if version else "version not known"


def _windows(path: Path, limit: int, keep: int) -> Iterator[bytes]:
    """The file's first `limit` bytes, read a chunk at a time; each window repeats the last `keep` bytes of the
    one before, so that a marker that spans two reads is still seen whole."""
    tail = b""
    read = 0
    with path.open("rb") as f:
        while read < limit:
            chunk = f.read(min(_CHUNK, limit - read))
            if not chunk:
                return
            read += len(chunk)
            window = tail + chunk
            yield window
            tail = window[-keep:]


def glibc_version(path: Path, limit: int = EXE_SCAN_LIMIT) -> tuple[int, int] | None:
    """The version in a glibc's banner ("GNU C Library ... release version 2.36"), in a libc.so.6 or a
    static executable; None when there is none within `limit` bytes."""
    for window in _windows(path, limit, keep=64):
        match = _GLIBC_BANNER.search(window)
        if match:
            return int(match[1]), int(match[2])
    return None


def libc_from_maps(maps_text: str) -> LibcKind | None:
    """The libc a dynamically linked process mapped, None when it mapped none."""
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6:
            continue
        name = fields[5].rsplit("/", 1)[-1]
        if name.startswith(("ld-musl-", "libc.musl-")):
            return "musl"
        # libc.so.6 and ld-linux-x86-64.so.2 (glibc >= 2.34), libc-2.31.so and ld-2.31.so before.
        if name.startswith(("libc.so.6", "ld-linux-x86-64.so")) or re.match(r"(libc|ld)-2\.\d+\.so", name):
            return "glibc"
    return None


def is_static_glibc(exe: Path, limit: int = EXE_SCAN_LIMIT) -> bool:
    """Does the executable hold a static glibc's markers? Reads at most `limit` bytes."""
    keep = max(len(m) for m in _STATIC_GLIBC_MARKERS) - 1
    return any(marker in window for window in _windows(exe, limit, keep) for marker in _STATIC_GLIBC_MARKERS)


def environ_tunables(environ: bytes) -> str:
    """GLIBC_TUNABLES from a process's /proc/PID/environ. glibc (2.36 at least) parses the variable in place
    and leaves a NUL where each ':' was, so the tunables after the first read as entries of their own:
    they are the entries that follow it and begin with "glibc."."""
    entries = environ.split(b"\0")
    for i, entry in enumerate(entries):
        if entry.startswith(b"GLIBC_TUNABLES="):
            parts = [entry.partition(b"=")[2]]
            for following in entries[i + 1:]:
                if not following.startswith(b"glibc."):
                    break
                parts.append(following)
            return b":".join(parts).decode(errors="replace")
    return ""


def read_source_cpu(pid: int, proc: Path = Path("/proc")) -> SourceCpu:
    """A live process's CPU facts (blocking reads: call it in a thread). Needs the right to read the
    process's environ, maps and exe (root, or its owner)."""
    base = proc / str(pid)
    command = (base / "comm").read_text().strip()
    host = cpuinfo_features((proc / "cpuinfo").read_text())
    tunables = environ_tunables((base / "environ").read_bytes())
    maps = (base / "maps").read_text()
    libc = libc_from_maps(maps)
    if libc is None:
        try:
            libc = "glibc-static" if is_static_glibc(base / "exe") else "unknown"
        except OSError:
            libc = "unknown"
    version = None
    if libc in ("glibc", "glibc-static"):
        # The file as the process sees it: its own root (a container's image), not the host's.
        library = base / "exe" if libc == "glibc-static" else base / "root" / _libc_path(maps).lstrip("/")
        try:
            version = glibc_version(library)
        except OSError:
            version = None
    return SourceCpu(pid, command, host, libc, tunables, version)


def _libc_path(maps_text: str) -> str:
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and re.match(r"libc(\.so\.6|-2\.\d+\.so)", fields[5].rsplit("/", 1)[-1]):
            return fields[5]
    return "/nonexistent"
