"""`androcond devices [--json]` and `androcond devices doctor`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

from ..cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_config_option
from ..config import load_settings
from ..criu import compat as criu_compat
from ..link.adb import AdbClient, AdbError
from ..link.devices import EMULATION_VA_BITS, DeviceStatus, probe_all
from ..provision import bundle, doctor


def register(commands: Any) -> None:
    devices = commands.add_parser("devices", help="list configured devices, how each is reached, and its state")
    add_config_option(devices)
    devices.add_argument("--json", action="store_true", help="one JSON document")
    devices.set_defaults(handler=_cmd_devices)
    verbs = devices.add_subparsers(dest="devices_verb", metavar="VERB")
    doctor = verbs.add_parser("doctor", help="what a device has of what androcond needs there (over adb alone)")
    doctor.add_argument("name", nargs="?", help="a configured device (its adb_serial is used)")
    doctor.add_argument("--adb", metavar="SERIAL", help="the device's adb serial (instead of a configured name)")
    doctor.add_argument("--json", action="store_true", help="one JSON document")
    add_config_option(doctor)
    doctor.set_defaults(handler=_cmd_doctor)
    one_file = verbs.add_parser("bundle", help="write the agent as one file (a zipapp) for a device's own Python")
    one_file.add_argument("out", type=Path, help="where to write it (e.g. androcond-agent.pyz)")
    one_file.set_defaults(handler=_cmd_bundle)


def _cmd_bundle(args: argparse.Namespace) -> int:
    try:
        size = bundle.build(args.out)
    except (bundle.BundleError, OSError) as exc:
        print(f"androcond devices bundle: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.out}: {size} bytes; run it as `python3 {args.out.name} agent serve --config FILE` on the device "
          "(it needs python3 and its cryptography)")
    return EXIT_OK


def _cmd_doctor(args: argparse.Namespace) -> int:
    serial = args.adb
    if not serial:
        if not args.name:
            print("androcond devices doctor: name a configured device or give --adb SERIAL", file=sys.stderr)
            return EXIT_USAGE
        device = load_settings(args.config).devices.get(args.name)
        if device is None or not device.adb_serial:
            print(f"androcond devices doctor: no device {args.name!r} with an adb_serial in the configuration",
                  file=sys.stderr)
            return EXIT_USAGE
        serial = device.adb_serial
    try:
        output = asyncio.run(probe_over_adb(AdbClient(), serial))
    except AdbError as exc:
        print(f"androcond devices doctor: {exc}", file=sys.stderr)
        return EXIT_FAILED
    found = doctor.assess(output, criu_compat.runc_options())
    missing = [r for r in found if r.state == doctor.State.MISSING]
    if args.json:
        print(json.dumps({"serial": serial, "ready": not missing, "requirements": doctor.as_json(found)}, indent=2))
    else:
        for r in found:
            print(f"{r.state.upper():<8} {r.name:<28} {r.detail}")
            if r.state != doctor.State.OK:
                print(f"{'':<8} {'':<28} without it: {r.blocks}" + (f"; fix: {r.fix}" if r.fix else ""))
        print(f"{serial}: " + ("ready" if not missing else f"{len(missing)} requirement(s) missing"))
    return EXIT_OK if not missing else EXIT_FAILED


async def probe_over_adb(adb: AdbClient, serial: str) -> str:
    """The probe's output, run as root: through the device's su when adbd is not root."""
    first = (await adb.shell(serial, doctor.PROBE)).text
    if doctor.sections(first).get("id", ["?"])[0].strip() == "0":
        return first
    encoded = base64.b64encode(doctor.PROBE.encode()).decode()
    again = (await adb.shell(serial, f"echo {encoded} | base64 -d | su 0 sh 2>/dev/null")).text
    return again if doctor.sections(again).get("id", ["?"])[0].strip() == "0" else first


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
