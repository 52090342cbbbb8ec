"""`androcond devices [--json]`."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from ..cli_common import EXIT_OK, add_config_option
from ..config import load_settings
from ..criu import compat as criu_compat
from ..link.adb import AdbClient
from ..link.devices import EMULATION_VA_BITS, DeviceStatus, probe_all


def register(commands: Any) -> None:
    devices = commands.add_parser("devices", help="list configured devices, how each is reached, and its state")
    add_config_option(devices)
    devices.add_argument("--json", action="store_true", help="one JSON document")
    devices.set_defaults(handler=_cmd_devices)


def _cmd_devices(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    statuses = asyncio.run(probe_all(list(settings.devices.values()), AdbClient()))
    if args.json:
        print(json.dumps({"devices": [s.as_json() for s in statuses]}, indent=2))
        return EXIT_OK
    if not statuses:
        print("no devices configured")
    for s in statuses:
        print(describe(s))
    return EXIT_OK


def describe(s: DeviceStatus) -> str:
    """One device's line of `androcond devices`."""
    if not s.reachable:
        return f"{s.name:<16} {s.reached_by:<28} UNREACHABLE  {s.error}"
    notes = "" if s.criu_dumps_sockets else "  (its CRIU cannot move network sockets)"
    notes += "" if s.fast_restore else "  (no androcond runtime: plain, slower restore)"
    if s.criu_options_missing:
        notes += f"  (NOT READY: its {criu_compat.RUNC_CONF} lacks {', '.join(s.criu_options_missing)})"
    if s.post_copy is not None and s.lazy != "false":
        notes += f"  post-copy: {'yes' if s.post_copy else 'NO (needs the runtime and userfaultfd)'}"
        notes += " (lazy = true: moves refused)" if s.lazy == "true" and not s.post_copy else ""
    if s.cross_isa is not None:
        notes += f"  cross-ISA: {'yes' if s.cross_isa else 'NO'} ({s.va_bits or '?'}-bit addresses)"
    if s.emulation is not None and s.emulate != "false":
        notes += f"  emulation: {_emulation(s)}"
    if s.compression:
        notes += f"  compression: {s.compression}"
    return (f"{s.name:<16} {s.reached_by:<28} reachable  {s.isa}  agent {s.agent_version}  "
            f"engine {s.engine_version or '-'}  criu {s.criu_version or '-'}  kernel {s.kernel or '?'}{notes}")


def _emulation(s: DeviceStatus) -> str:
    """Whether x86_64 containers run there emulated, under which qemu, and whether `docker exec` works."""
    if s.emulation:
        exec_ = "yes" if s.binfmt_x86_64 else "NO (no binfmt_misc entry for x86_64 with flag F)"
        return f"yes, qemu-x86_64 {s.emulator_version} ({s.emulator}), docker exec: {exec_}"
    if not s.emulator:
        why = "no static qemu-x86_64"
    elif s.va_bits and s.va_bits < EMULATION_VA_BITS:
        why = f"{s.va_bits}-bit addresses, it needs {EMULATION_VA_BITS}"
    else:
        why = "this host's containers are not x86_64"
    return f"NO ({why})" + (" (emulate = true: moves refused)" if s.emulate == "true" else "")
