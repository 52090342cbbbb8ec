"""`androcond run`: the daemon in the foreground (systemd runs it this way)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ..cli_common import add_config_option
from ..config import load_settings
from ..daemon.serve import serve
from ..errors import ConfigError
from ..faults import Faults
from ..logging import configure_logging


def register(commands: Any) -> None:
    run = commands.add_parser("run", help="run the daemon in the foreground (systemd runs it this way)")
    add_config_option(run)
    run.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.daemon.log_level, settings.daemon.log_format)
    try:  # the bed's fault points, read once (faults.py); unset everywhere else
        faults = Faults.from_environ()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return asyncio.run(serve(settings, faults))
