"""The ``androcond`` command line. Exit codes: 0 ok, 1 operation failed, 2 usage or config error.

Each verb lives with the part of androcond it drives and registers itself through a ``register(commands)``
function in the module :data:`VERBS` names; its handler takes the parsed arguments and returns the exit code.
Only verbs that work are offered.

A device installs androcond without the ``daemon`` extra, so the host's verbs (everything but ``agent``) may
lack their packages: then they are listed with how to install them, and asked for, refused in one line (exit 2).
Their modules are imported only when they can run and are asked for (or for ``--help``): ``androcond agent …``
imports nothing of the daemon's.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..cli_common import EXIT_FAILED, EXIT_USAGE
from ..errors import AndrocondError, ConfigError
from ..logging import configure_logging

Registrar = Callable[[Any], None]

# The `daemon` extra of pyproject.toml: each distribution and the module it installs.
DAEMON_PACKAGES: dict[str, str] = {
    "pyelftools": "elftools",
    "prometheus-client": "prometheus_client",
    "rich": "rich",
    "cloudevents": "cloudevents",
}
DAEMON_INSTALL = "pip install 'androcond[daemon]'"


@dataclass(frozen=True)
class Verbs:
    """The verbs one module registers, through its ``register(commands)``."""

    names: tuple[str, ...]
    module: str  # relative to this package; imported only when these verbs may be used
    host: bool = True  # a verb of the host's: needs the daemon's packages

    def register(self, commands: Any) -> None:
        registrar: Registrar = importlib.import_module(self.module, __package__).register
        registrar(commands)


# In the order `androcond --help` lists them.
VERBS: tuple[Verbs, ...] = (
    Verbs(("run",), ".run"),
    Verbs(("migrate", "migrations", "containers"), ".migrations"),
    Verbs(("devices",), ".devices"),
    Verbs(("agent",), "..agent.cli", host=False),
    Verbs(("images",), ".images"),
)
HOST_VERBS = frozenset(name for verbs in VERBS if verbs.host for name in verbs.names)
DEVICE_VERBS = frozenset(name for verbs in VERBS if not verbs.host for name in verbs.names)


def missing_daemon_packages() -> list[str]:
    """The distributions of the `daemon` extra that are not installed (looked up, not imported)."""
    missing = []
    for distribution, module in DAEMON_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: a module in sys.modules without a spec
            found = False
        if not found:
            missing.append(distribution)
    return missing


def command_of(argv: Sequence[str]) -> str | None:
    """The verb asked for; None if there is none or the top-level help comes first."""
    for arg in argv:
        if arg in ("-h", "--help"):
            return None
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None, missing: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; when `command` is a known verb only its own module is imported (argparse needs no more).
    `missing`: the daemon's packages not installed; the host's verbs are then only listed."""
    parser = argparse.ArgumentParser(
        prog="androcond",
        description="Move a running Docker container from a Linux host to an Android device, exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"androcond {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    known = any(command in verbs.names for verbs in VERBS)
    for verbs in VERBS:
        if known and command not in verbs.names:
            continue
        if verbs.host and missing:
            for name in verbs.names:
                commands.add_parser(name, help=f"(on the host: {DAEMON_INSTALL})")
        else:
            verbs.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = command_of(argv)
    missing = [] if command in DEVICE_VERBS else missing_daemon_packages()
    if command in HOST_VERBS and missing:
        print(f"androcond: {command} is a verb of the host and needs the daemon's packages "
              f"({', '.join(missing)} not installed): {DAEMON_INSTALL}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser(command, missing).parse_args(argv)
    # Until a verb configures its own (the daemon and the agent do, from their config): warnings and errors on
    # stderr, so a log line never lands in a verb's output (a --json document on stdout).
    configure_logging("warning")
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
