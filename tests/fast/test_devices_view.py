"""`androcond devices`: whether a device can run this host's x86_64 containers emulated, with which qemu, and
whether `docker exec` works there (the judgement from its hello, and the line that shows it)."""

from __future__ import annotations

import dataclasses

from androcond.cli.devices import describe
from androcond.link.devices import DeviceStatus, emulation

ARM64 = DeviceStatus("pixel", "adb emulator-5554", True, "device", isa="aarch64", agent_version="0.9",
                     engine_version="26.1", kernel="6.12.0", criu_version="4.1", criu_dumps_sockets=True,
                     fast_restore=True, va_bits=48, cross_isa=True, criu_options_missing=[],
                     emulation=True, emulate="auto", emulator="/usr/bin/qemu-x86_64", emulator_version="10.0.2",
                     binfmt_x86_64=True)


def test_emulation_judged_from_the_hello() -> None:
    assert emulation("aarch64", "/usr/bin/qemu-x86_64", 48, host="x86_64") is True
    assert emulation("aarch64", "/usr/bin/qemu-x86_64", 0, host="x86_64") is True  # bits not known: try
    assert emulation("aarch64", "", 48, host="x86_64") is False
    assert emulation("aarch64", "/usr/bin/qemu-x86_64", 39, host="x86_64") is False
    assert emulation("x86_64", "", 47, host="x86_64") is None  # same ISA: it runs natively
    assert emulation("x86_64", "/usr/bin/qemu-x86_64", 48, host="aarch64") is False


def test_the_line_shows_qemu_and_docker_exec() -> None:
    line = describe(ARM64)
    assert line.startswith("pixel            adb emulator-5554            reachable  aarch64  agent 0.9")
    assert line.endswith("  cross-ISA: yes (48-bit addresses)  emulation: yes, qemu-x86_64 10.0.2 "
                         "(/usr/bin/qemu-x86_64), docker exec: yes")
    no_binfmt = describe(dataclasses.replace(ARM64, binfmt_x86_64=False))
    assert no_binfmt.endswith("docker exec: NO (no binfmt_misc entry for x86_64 with flag F)")


def test_why_not_and_when_it_is_not_shown() -> None:
    none = dataclasses.replace(ARM64, emulation=False, emulator="", emulator_version="", binfmt_x86_64=False)
    assert describe(none).endswith("  emulation: NO (no static qemu-x86_64)")
    assert describe(dataclasses.replace(none, emulate="true")).endswith(
        "  emulation: NO (no static qemu-x86_64) (emulate = true: moves refused)")
    small = dataclasses.replace(ARM64, emulation=False, va_bits=39, cross_isa=False)
    assert describe(small).endswith("  emulation: NO (39-bit addresses, it needs 48)")
    assert "emulation" not in describe(dataclasses.replace(ARM64, emulate="false"))
    same_isa = dataclasses.replace(ARM64, isa="x86_64", emulation=None, cross_isa=None, emulator="")
    assert "emulation" not in describe(same_isa)
    away = DeviceStatus("away", "ssh 10.0.0.9:1", False, error="cannot connect")
    assert describe(away) == "away             ssh 10.0.0.9:1               UNREACHABLE  cannot connect"
    assert away.as_json()["binfmt_x86_64"] is None and away.as_json()["emulation"] is None


def test_the_json_carries_the_emulator() -> None:
    doc = ARM64.as_json()
    assert (doc["emulation"], doc["emulate"], doc["emulator"], doc["emulator_version"], doc["binfmt_x86_64"]) == (
        True, "auto", "/usr/bin/qemu-x86_64", "10.0.2", True)
