"""The agent installs and runs without the daemon's packages (`pip install androcond` on a device): its import
path takes none of them, `androcond agent serve --help` works, and the host's verbs say what to install."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from androcond.cli import main as cli

CHECKOUT = Path(__file__).resolve().parents[2]
# The modules the `daemon` extra installs, its dependencies' included (rich → pygments, markdown-it, mdurl;
# cloudevents → deprecation → packaging, python-dateutil, tzdata).
DAEMON_MODULES = frozenset({"elftools", "prometheus_client", "rich", "pygments", "markdown_it", "mdurl",
                            "cloudevents", "deprecation", "packaging", "dateutil", "tzdata"})

# Makes the daemon's modules unimportable, as in an install without the extra (run before anything else).
WITHOUT_DAEMON = f"""
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {sorted(DAEMON_MODULES)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
"""
IMPORTED = f"print(sorted({{m.partition('.')[0] for m in sys.modules}} & {set(DAEMON_MODULES)!r}))"
IMPORTED_MODULES = f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {set(DAEMON_MODULES)!r}))"


def python(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env,
                          cwd=CHECKOUT, timeout=120, check=False)


def test_daemon_extra_is_what_the_cli_checks_for() -> None:
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
                for req in requirements}

    assert names(project["optional-dependencies"]["daemon"]) == set(cli.DAEMON_PACKAGES)
    assert not names(project["dependencies"]) & set(cli.DAEMON_PACKAGES)
    assert set(cli.DAEMON_PACKAGES.values()) <= DAEMON_MODULES


def test_agent_import_path_without_the_daemon_packages() -> None:
    result = python(WITHOUT_DAEMON + "import androcond.agent.server, androcond.agent.cli, androcond.agent.page_keeper\n"
                    + IMPORTED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_agent_import_path_takes_no_daemon_package_where_they_are_installed() -> None:
    """With the extra installed, the agent still imports none of it, but for what structlog looks for on its
    own (rich, for its tracebacks) when it is there."""
    structlog = python("import sys, structlog\n" + IMPORTED_MODULES)
    agent = python("import sys, androcond.agent.server, androcond.agent.cli\n" + IMPORTED_MODULES)
    assert structlog.returncode == 0, structlog.stderr
    assert agent.returncode == 0, agent.stderr
    assert agent.stdout == structlog.stdout


def run_cli(*argv: str, without_daemon: bool) -> subprocess.CompletedProcess[str]:
    """`python -m androcond ARGV`, with or without the daemon's packages."""
    code = (WITHOUT_DAEMON if without_daemon else "import sys\n") + (
        "import runpy\nsys.argv[0] = 'androcond'\n"
        "try:\n    runpy.run_module('androcond', run_name='__main__', alter_sys=True)\n"
        "finally:\n    " + IMPORTED.replace("\n", "\n    ") + "\n")
    return python(code, *argv)


@pytest.mark.parametrize("without_daemon", [True, False], ids=["agent-only", "with-daemon"])
def test_agent_serve_help(without_daemon: bool) -> None:
    result = run_cli("agent", "serve", "--help", without_daemon=without_daemon)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
    if without_daemon:
        assert result.stdout.rstrip().endswith("[]")  # nothing of the daemon's imported


@pytest.mark.parametrize("verb", sorted(cli.HOST_VERBS))
def test_host_verbs_without_the_daemon_packages_say_what_to_install(verb: str) -> None:
    result = run_cli(verb, "--help", without_daemon=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"androcond: {verb} " in lines[0]
    assert "pip install 'androcond[daemon]'" in lines[0]


@pytest.mark.parametrize("without_daemon", [True, False], ids=["agent-only", "with-daemon"])
def test_help_lists_every_verb(without_daemon: bool) -> None:
    result = run_cli("--help", without_daemon=without_daemon)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.split("positional arguments:")[1].splitlines()
              if line.startswith("    ") and not line.startswith("      ")}
    assert listed == cli.HOST_VERBS | cli.DEVICE_VERBS
    assert ("pip install 'androcond[daemon]'" in result.stdout) is without_daemon


def test_each_module_registers_the_verbs_named_for_it() -> None:
    if cli.missing_daemon_packages():
        pytest.skip("the daemon extra is not installed")
    for verbs in cli.VERBS:
        parser = cli.build_parser(verbs.names[0])
        commands = next(a for a in parser._actions if a.dest == "command")
        assert set(commands.choices or ()) == set(verbs.names), verbs.module


def test_command_of() -> None:
    assert cli.command_of(["agent", "serve", "--help"]) == "agent"
    assert cli.command_of(["--version"]) is None
    assert cli.command_of(["-h", "agent"]) is None  # the top-level help, which lists every verb
    assert cli.command_of([]) is None


# What the agent may import from outside agent/ and protocol/: the modules both sides share. Anything else
# is the host's (container_config, transport, the daemon, ...) and would pull the host's code onto the device.
# The lazy dump (and its freezer hold) is both sides': the host's flat freeze and a device's (post-copy back);
# so is keeping CRIU's kernel probe (criu/kdat.py).
SHARED = {"androcond", "androcond.build", "androcond.cli_common", "androcond.config", "androcond.logging",
          "androcond.errors", "androcond.engine", "androcond.criu", "androcond.criu.compat", "androcond.criu.leftovers",
          "androcond.criu.kdat",
          "androcond.criu.runc", "androcond.criu.lazy_dump", "androcond.criu.freezer", "androcond.criu.page_protocol",
          "androcond.aio", "androcond.popcorn", "androcond.popcorn.notify", "androcond.popcorn.symbols"}


def test_agent_imports_only_shared_modules() -> None:
    result = python("import sys, androcond.agent.server, androcond.agent.cli, androcond.agent.page_keeper\n"
                    "print(*(m for m in sys.modules if m.startswith('androcond')\n"
                    "        and not m.startswith(('androcond.agent', 'androcond.protocol'))))")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == SHARED
