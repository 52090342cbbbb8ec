"""The ``androcond`` command line. Exit codes: 0 ok, 1 operation failed, 2 usage or config error.

Each verb lives with the part of androcond it drives and registers itself through a ``register(commands)``
function listed in :data:`COMMANDS`; its handler takes the parsed arguments and returns the exit code.
Only verbs that work are offered.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .agent import cli as agent_cli
from .cli_common import EXIT_FAILED, EXIT_USAGE, add_config_option
from .client_cli import register as _register_client
from .config import load_settings
from .daemon import serve
from .devices_cli import register as _register_devices
from .errors import AndrocondError, ConfigError
from .images.cli import register as _register_images
from .logging import configure_logging

Registrar = Callable[[Any], None]


def _register_run(commands: Any) -> None:
    run = commands.add_parser("run", help="run the daemon in the foreground (systemd runs it this way)")
    add_config_option(run)
    run.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.daemon.log_level, settings.daemon.log_format)
    return asyncio.run(serve(settings))


COMMANDS: tuple[Registrar, ...] = (
    _register_run,
    _register_client,
    _register_devices,
    agent_cli.register,
    _register_images,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="androcond",
        description="Move a running Docker container from a Linux host to an Android device, exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"androcond {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"androcond: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AndrocondError as exc:
        print(f"androcond: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
