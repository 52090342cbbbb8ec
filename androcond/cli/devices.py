"""`androcond devices [--json]` and `androcond devices doctor`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh

from ..build import build_version
from ..cli_common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_config_option
from ..config import DEFAULT_CONFIG_PATH, DeviceSettings, load_settings, locate_config
from ..criu import compat as criu_compat
from ..link.adb import AdbClient, AdbError
from ..link.devices import EMULATION_VA_BITS, DeviceStatus, probe, probe_all
from ..provision import bundle, doctor
from ..provision import setup as provision


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
    setup = verbs.add_parser("setup", help="make a rooted device a target over adb alone (idempotent)")
    setup.add_argument("name", help="the device's name in the daemon's config")
    setup.add_argument("--adb", metavar="SERIAL", required=True, help="the device's adb serial")
    setup.add_argument("--identity", type=Path, required=True,
                       help="the daemon's ssh client key (its public half is authorized on the device)")
    setup.add_argument("--port", type=int, default=8022, help="the agent's port on the device (default 8022)")
    setup.add_argument("--dir", help="the agent's directory there (default /data/androcond, else "
                                     "/var/lib/androcond)")
    setup.add_argument("--known-hosts", type=Path, help="where the agent's host key goes (default: beside the "
                                                        "identity, known_hosts-NAME)")
    setup.add_argument("--restart-engine", action="store_true",
                       help="restart the engine even when containers run there, when it must restart (to turn its "
                            "experimental API on)")
    setup.add_argument("--print", action="store_true", help="print the [devices.NAME] table instead of adding it "
                                                            "to the config")
    add_config_option(setup)
    setup.set_defaults(handler=_cmd_setup)
    undo = verbs.add_parser("remove", help="undo on the device what setup did")
    undo.add_argument("name")
    undo.add_argument("--adb", metavar="SERIAL", required=True)
    undo.add_argument("--dir", help="the agent's directory there, as given to setup")
    undo.set_defaults(handler=_cmd_remove)


async def _agent_dir(device: provision.Device, given: str | None) -> str:
    if given:
        return given
    return "/data/androcond" if "yes" in await device.sh("[ -d /data ] && echo yes; true", "looking for /data") \
        else "/var/lib/androcond"


def _cmd_setup(args: argparse.Namespace) -> int:
    try:
        public = asyncssh.read_private_key(args.identity).export_public_key().decode().strip()
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        print(f"androcond devices setup: cannot read the identity {args.identity}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    known_hosts = args.known_hosts or args.identity.parent / f"known_hosts-{args.name}"

    async def run() -> tuple[str, provision.Setup]:
        device = provision.Device(AdbClient(), args.adb)
        await device.become_root()
        plan = provision.Setup(args.name, await _agent_dir(device, args.dir), args.port, public,
                               restart_engine=args.restart_engine)
        with tempfile.TemporaryDirectory(prefix="androcond-setup-") as tmp:
            agent_file = await asyncio.to_thread(provision.agent_file, Path(tmp))
            return await provision.setup(device, plan, agent_file), plan

    started = time.monotonic()
    try:
        host_key, plan = asyncio.run(run())
    except (AdbError, provision.RemoteError, bundle.BundleError, TimeoutError) as exc:
        print(f"androcond devices setup: {exc or 'the agent did not start listening'}", file=sys.stderr)
        return EXIT_FAILED
    known_hosts.write_text(f"{args.adb} {host_key}\n")
    for change in plan.changes:
        print(f"  {change}")
    # The proof: the daemon's own way in (adb forward, ssh with its key, the host key just read) reaches an
    # agent of this build.
    settings = DeviceSettings(args.name, adb_serial=args.adb, agent_port=args.port, identity=args.identity,
                              known_hosts=known_hosts)
    status = asyncio.run(probe(settings, AdbClient()))
    if not status.reachable:
        print(f"androcond devices setup: the agent does not answer: {status.error}", file=sys.stderr)
        return EXIT_FAILED
    if not status.agent_current:
        print(f"androcond devices setup: the agent answering is build {status.agent_version}, not this one "
              f"({build_version()})", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.name}: " + ("set up" if plan.changes else "nothing changed") +
          f" in {time.monotonic() - started:.1f} s; agent {status.agent_version} answers from {plan.directory}, "
          f"port {plan.port}")
    table = (f'\n[devices.{args.name}]\nadb_serial = "{args.adb}"\nagent_port = {args.port}\n'
             f'identity = "{args.identity}"\nknown_hosts = "{known_hosts}"\n')
    config = locate_config(args.config, os.environ) or DEFAULT_CONFIG_PATH
    if args.print:
        print(table)
    elif f"[devices.{args.name}]" in (config.read_text() if config.exists() else ""):
        print(f"{config} already has [devices.{args.name}] (left as it is)")
    else:
        with config.open("a") as f:
            f.write(table)
        print(f"added [devices.{args.name}] to {config}")
    return EXIT_OK


def _cmd_remove(args: argparse.Namespace) -> int:
    async def run() -> list[str]:
        device = provision.Device(AdbClient(), args.adb)
        await device.become_root()
        return await provision.remove(device, await _agent_dir(device, args.dir), args.name)

    try:
        undone = asyncio.run(run())
    except (AdbError, provision.RemoteError) as exc:
        print(f"androcond devices remove: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for step in undone:
        print(f"  {step}")
    return EXIT_OK


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
    if s.agent_current is False:
        notes += f"  (agent NOT this daemon's build {build_version()}: `androcond devices setup {s.name}` upgrades it)"
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
