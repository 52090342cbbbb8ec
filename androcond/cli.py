"""The ``androcond`` command line. Exit codes: 0 ok, 1 operation failed, 2 usage or config error."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from . import __version__
from .config import load_settings
from .daemon import serve
from .errors import AndrocondError, ConfigError
from .logging import configure_logging

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="androcond",
        description="Move a running Docker container from a Linux host to an Android device, exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"androcond {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the daemon in the foreground (systemd runs it this way)")
    run.add_argument("--config", metavar="FILE",
                     help="config file (default: $ANDROCOND_CONFIG, else /etc/androcond/androcond.toml)")
    run.set_defaults(handler=_cmd_run)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.daemon.log_level, settings.daemon.log_format)
    return asyncio.run(serve(settings))


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
