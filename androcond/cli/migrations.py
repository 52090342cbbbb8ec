"""`androcond migrate`, `androcond migrations` and `androcond migrations show`: ask the running daemon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from rich.console import Console, RenderableType

from ..cli_common import EXIT_FAILED, EXIT_OK, add_config_option
from ..config import load_settings
from ..migration.states import MigrationState
from .client import call, find_migration, wait_for
from .views import (
    MigrationProgress,
    containers_table,
    migration_detail,
    migrations_table,
    outcome_line,
    print_plain,
)

CONFIG_HELP = "config file (default: $ANDROCOND_CONFIG, else /etc/androcond/androcond.toml)"


def register(commands: Any) -> None:
    migrate = commands.add_parser("migrate", help="ask the daemon to move a container to a device")
    migrate.add_argument("container", help="container name or id (on the daemon's Docker engine), or the name "
                                           "of one that runs on a device")
    migrate.add_argument("--to", required=True, metavar="DEVICE",
                         help="device name from the config, or `host` to bring it back to the daemon's engine")
    migrate.add_argument("--keep-source", action="store_true", help="keep the stopped source container")
    migrate.add_argument("--wait", action="store_true",
                         help="wait until it is done (a progress bar on a terminal); "
                              "exit 0 only if the container runs on the device")
    migrate.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_config_option(migrate)
    migrate.set_defaults(handler=_cmd_migrate)

    migrations = commands.add_parser("migrations", help="list recent migrations (`migrations show ID`: one)",
                                     usage="%(prog)s [-h] [--json] [--config FILE] [show ID]",
                                     description="Without an action: the recent migrations, from the journal.")
    migrations.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_config_option(migrations)
    migrations.set_defaults(handler=_cmd_migrations)
    # Optional, so that `androcond migrations` alone still lists (scripts use it).
    actions = migrations.add_subparsers(dest="action", title="actions", metavar="ACTION")
    show = actions.add_parser("show", help="one migration: its fields and the timeline of its states")
    show.add_argument("id", metavar="ID", help="a migration id, or its first characters as listed")
    # SUPPRESS: a sub-parser's defaults would overwrite --json/--config given before `show`.
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="the record (with its transitions) as one JSON document on stdout")
    show.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP)
    show.set_defaults(handler=_cmd_migration_show)

    containers = commands.add_parser("containers", help="the containers androcond moved, and where each runs now")
    containers.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_config_option(containers)
    containers.set_defaults(handler=_cmd_containers)


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    # The bar goes to stderr, and only for a person watching: stdout keeps the result alone.
    view = MigrationProgress(Console(stderr=True)) if args.wait and not args.json and sys.stderr.isatty() \
        else None
    requested: dict[str, Any] = {}

    async def go() -> dict[str, Any]:
        record: dict[str, Any] = await call(settings, "POST", "/migrations",
                                            {"container": args.container, "device": args.to,
                                             "keep_source": args.keep_source})
        requested.update(record)
        if not args.wait:
            return record
        return await wait_for(settings, record["id"], view)

    try:
        # Stopped outside asyncio.run: its KeyboardInterrupt comes after the loop is gone.
        with view if view is not None else contextlib.nullcontext():
            record = asyncio.run(go())
    except KeyboardInterrupt:
        if requested:
            where = (f"migration {requested['id']} goes on in the daemon "
                     f"(`androcond migrations show {requested['id'][:12]}`)")
        else:
            where = "the request may or may not have reached the daemon (`androcond migrations`)"
        print(f"androcond: interrupted; {where}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(record, indent=2))
    elif not args.wait:
        print(f"migration {record['id']} of {record['container_name']} to {record['device']}: {record['state']}")
    else:
        print(outcome_line(record))
    if args.wait and record["state"] != MigrationState.DONE:
        return EXIT_FAILED
    return EXIT_OK


def _print(renderables: list[RenderableType]) -> None:
    """Rich on a terminal; aligned plain text without colours or box lines for a pipe or a file."""
    if sys.stdout.isatty():
        console = Console()
        for renderable in renderables:
            console.print(renderable)
    else:
        print_plain(renderables, sys.stdout)


def _cmd_migrations(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    data: dict[str, Any] = asyncio.run(call(settings, "GET", "/migrations"))
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    _print([migrations_table(data["migrations"], plain=not sys.stdout.isatty())])
    return EXIT_OK


def _cmd_containers(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    data: dict[str, Any] = asyncio.run(call(settings, "GET", "/containers"))
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    _print([containers_table(data["containers"], plain=not sys.stdout.isatty())])
    return EXIT_OK


def _cmd_migration_show(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)  # the parent parser's, or show's own
    record = asyncio.run(find_migration(settings, args.id))  # unknown: ApiError, exit 1 with its message
    if args.json:
        print(json.dumps(record, indent=2))
        return EXIT_OK
    _print(migration_detail(record, plain=not sys.stdout.isatty()))
    return EXIT_OK
