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
from ..link.devices import probe_all


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
        sockets = "" if s.criu_dumps_sockets else "  (its CRIU cannot move network sockets)"
        sockets += "" if s.fast_restore else "  (no androcond runtime: plain, slower restore)"
        if s.criu_options_missing:
            sockets += f"  (NOT READY: its {criu_compat.RUNC_CONF} lacks {', '.join(s.criu_options_missing)})"
        if s.post_copy is not None and s.lazy != "false":
            sockets += f"  post-copy: {'yes' if s.post_copy else 'NO (needs the runtime and userfaultfd)'}"
            sockets += " (lazy = true: moves refused)" if s.lazy == "true" and not s.post_copy else ""
        if s.cross_isa is not None:
            sockets += (f"  cross-ISA: {'yes' if s.cross_isa else 'NO'} ({s.va_bits or '?'}-bit addresses)")
        state = (f"reachable  {s.isa}  agent {s.agent_version}  engine {s.engine_version or '-'}  "
                 f"criu {s.criu_version or '-'}  kernel {s.kernel or '?'}{sockets}"
                 if s.reachable else f"UNREACHABLE  {s.error}")
        print(f"{s.name:<16} {s.reached_by:<28} {state}")
    return EXIT_OK
