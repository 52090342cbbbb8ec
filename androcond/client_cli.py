"""`androcond migrate` and `androcond migrations`: ask the running daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .cli_common import EXIT_FAILED, EXIT_OK, add_config_option
from .client import call, wait_for
from .config import load_settings


def register(commands: Any) -> None:
    migrate = commands.add_parser("migrate", help="ask the daemon to move a container to a device")
    migrate.add_argument("container", help="container name or id (on the daemon's Docker engine)")
    migrate.add_argument("--to", required=True, metavar="DEVICE", help="device name from the config")
    migrate.add_argument("--keep-source", action="store_true", help="keep the stopped source container")
    migrate.add_argument("--wait", action="store_true",
                         help="wait until it is done; exit 0 only if the container runs on the device")
    migrate.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_config_option(migrate)
    migrate.set_defaults(handler=_cmd_migrate)

    migrations = commands.add_parser("migrations", help="list recent migrations")
    migrations.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_config_option(migrations)
    migrations.set_defaults(handler=_cmd_migrations)


class _Progress:
    """A one-line progress display on a terminal: phase and bytes."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.width = 0

    def __call__(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        mb = record.get("bytes_sent", 0) / 1e6
        line = f"\r{record['container_name']} → {record['device']}: {record['state']:<13} {mb:8.1f} MB sent"
        self.width = max(self.width, len(line))
        sys.stderr.write(line.ljust(self.width))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.width:
            sys.stderr.write("\n")


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)

    async def go() -> dict[str, Any]:
        record: dict[str, Any] = await call(settings, "POST", "/migrations",
                                            {"container": args.container, "device": args.to,
                                             "keep_source": args.keep_source})
        if not args.wait:
            return record
        progress = _Progress(enabled=not args.json and sys.stderr.isatty())
        try:
            return await wait_for(settings, record["id"], progress)
        finally:
            progress.close()

    record = asyncio.run(go())
    if args.json:
        print(json.dumps(record, indent=2))
    elif not args.wait:
        print(f"migration {record['id']} of {record['container_name']} to {record['device']}: {record['state']}")
    else:
        downtime = record.get("timings", {}).get("downtime_s")
        extra = f", downtime {downtime:.2f}s" if downtime is not None and record["state"] == "done" else ""
        error = f": {record['error']}" if record.get("error") and record["state"] != "done" else ""
        print(f"{record['container_name']} → {record['device']}: {record['state']}{extra}{error}")
    if args.wait and record["state"] != "done":
        return EXIT_FAILED
    return EXIT_OK


def _cmd_migrations(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    data: dict[str, Any] = asyncio.run(call(settings, "GET", "/migrations"))
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    for r in data["migrations"]:
        print(f"{r['id'][:12]}  {r['container_name']:<24} → {r['device'] or '-':<10} {r['state']:<12} "
              f"{r['error'][:60]}")
    return EXIT_OK
