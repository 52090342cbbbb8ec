"""`androcond agent serve|stdio`."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ..cli_common import add_config_option
from ..config import load_settings
from ..logging import configure_logging
from . import server


def register(commands: Any) -> None:
    agent = commands.add_parser("agent", help="the device-side peer")
    verbs = agent.add_subparsers(dest="agent_command", metavar="MODE", required=True)
    serve = verbs.add_parser("serve", help="run the agent as its own ssh server ([agent] listen, host_key, "
                                           "authorized_keys)")
    add_config_option(serve)
    serve.set_defaults(handler=_cmd_serve)
    stdio = verbs.add_parser("stdio", help="serve one session over stdin/stdout (under a stock OpenSSH server)")
    add_config_option(stdio)
    stdio.set_defaults(handler=_cmd_stdio)


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    configure_logging(settings.daemon.log_level, settings.daemon.log_format)
    return asyncio.run(server.serve(settings.agent))


def _cmd_stdio(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    # stdout is the protocol channel: logs must stay on stderr, as JSON lines the client relays.
    configure_logging(settings.daemon.log_level, "json")
    return asyncio.run(server.stdio(settings.agent))
