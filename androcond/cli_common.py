"""What every verb of the command line shares (kept apart from cli.py so verb modules can import it)."""

from __future__ import annotations

import argparse

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default: $ANDROCOND_CONFIG, else /etc/androcond/androcond.toml)")
