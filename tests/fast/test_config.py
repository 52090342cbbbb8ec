"""Config: precedence, typed settings, and bad input → exit 2 with the file, the key and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from androcond.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Address, locate_config, parse_settings
from androcond.errors import ConfigError

GOOD = """
[daemon]
state_dir = "state"
api = "127.0.0.1:7707"
api_token = "s3cret-token"
[docker]
host = "unix:///run/docker.sock"
[devices.pixel]
adb_serial = "R58M12ABCDE"
identity = "id_ed25519"
[devices.board]
address = "192.0.2.10:8022"
[[webhooks]]
url = "https://hooks.example/androcond"
secret = "hook-secret"
events = ["failed"]
[agent]
spool_dir = "/data/spool"
listen = "0.0.0.0:8022"
"""


def write(tmp_path: Path, text: str, name: str = "androcond.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "androcond", *args], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def test_good_config_is_typed_and_frozen(tmp_path: Path) -> None:
    (tmp_path / "id_ed25519").write_text("key")
    path = write(tmp_path, GOOD)
    settings = parse_settings(__import__("tomllib").loads(GOOD), path)
    assert settings.daemon.state_dir == tmp_path / "state"  # relative to the file
    assert settings.devices["pixel"].identity == tmp_path / "id_ed25519"
    assert settings.devices["pixel"].agent_port == 8022
    assert settings.devices["board"].address == Address("192.0.2.10", 8022)
    assert str(Address.parse("[::1]:8022")) == "[::1]:8022" and Address.parse("[::1]:8022").host == "::1"
    assert settings.webhooks[0].events == ("failed",)
    assert "hook-secret" not in repr(settings) and "s3cret-token" not in repr(settings)
    with pytest.raises(AttributeError):
        settings.daemon.api = "x"  # type: ignore[misc]


def test_precedence(tmp_path: Path) -> None:
    cli = write(tmp_path, "", "cli.toml")
    env = write(tmp_path, "", "env.toml")
    assert locate_config(cli, {CONFIG_ENV: str(env)}) == cli
    assert locate_config(None, {CONFIG_ENV: str(env)}) == env
    expected_default = DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None
    assert locate_config(None, {}) == expected_default
    with pytest.raises(ConfigError, match=CONFIG_ENV):
        locate_config(None, {CONFIG_ENV: str(tmp_path / "missing.toml")})


BAD_INPUTS = [
    pytest.param("[daemon]\nstate_dri = '/x'\n", "daemon.state_dri", "unknown key", id="unknown-key"),
    pytest.param("[bogus]\n", "bogus", "unknown key", id="unknown-table"),
    pytest.param("[docker]\nhost = 5\n", "docker.host", "expected a string, got an integer", id="wrong-type"),
    pytest.param("[daemon]\nshutdown_timeout = true\n", "daemon.shutdown_timeout",
                 "expected a number, got a boolean", id="bool-not-number"),
    pytest.param("[devices.pixel]\nuser = 'root'\n", "devices.pixel", "neither", id="no-address-no-serial"),
    pytest.param("[devices.pixel]\nadb_serial = 'X'\nidentity = '/nonexistent/id_ed25519'\n",
                 "devices.pixel.identity", "cannot read file", id="unreadable-identity"),
    pytest.param("[devices.pixel]\naddress = 'nohostport'\n", "devices.pixel.address", "HOST:PORT",
                 id="bad-address"),
    pytest.param("[daemon]\napi = '127.0.0.1:7707'\n", "daemon.api_token", "required", id="tcp-api-no-token"),
    pytest.param("[[webhooks]]\nsecret = 'x'\n", "webhooks[0].url", "required", id="webhook-without-url"),
    pytest.param("[daemon\n", "not valid TOML", "", id="invalid-toml"),
]


@pytest.mark.parametrize(("text", "key", "expected"), BAD_INPUTS)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr
    assert key in result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_secret_value_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, "[[webhooks]]\nurl = 'https://h.example/'\nsecret = 12345678\n")
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert "webhooks[0].secret" in result.stderr and "12345678" not in result.stderr


def test_missing_config_from_env(tmp_path: Path) -> None:
    result = run_cli("run", env={CONFIG_ENV: str(tmp_path / "nope.toml"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert CONFIG_ENV in result.stderr and "Traceback" not in result.stderr


def test_cli_version_help_and_usage() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("androcond ")
    helptext = run_cli("--help")
    assert helptext.returncode == 0 and " run " in helptext.stdout
    usage = run_cli("frobnicate")
    assert usage.returncode == 2


def test_shipped_example_config_is_valid(tmp_path: Path) -> None:
    import tomllib

    example = Path(__file__).parents[2] / "examples" / "androcond.toml"
    doc = tomllib.loads(example.read_text())
    for device in doc["devices"].values():  # the example's key files do not exist on a test machine
        device.pop("identity", None)
        device.pop("known_hosts", None)
    settings = parse_settings(doc, example)
    assert settings.devices["pixel"].adb_serial == "R58M12ABCDE"


@pytest.mark.parametrize(("value", "mode"), [(None, "false"), ("true", "true"), ("false", "false"),
                                             ('"auto"', "auto")])
def test_lazy_per_device(tmp_path: Path, value: str | None, mode: str) -> None:
    text = GOOD.replace('address = "192.0.2.10:8022"', 'address = "192.0.2.10:8022"' +
                        (f"\nlazy = {value}" if value else ""))
    (tmp_path / "id_ed25519").write_text("key")
    settings = parse_settings(__import__("tomllib").loads(text), write(tmp_path, text))
    assert settings.devices["board"].lazy == mode
    assert settings.devices["pixel"].lazy == "false"
    assert settings.devices["pixel"].emulate == "auto"


@pytest.mark.parametrize("key", ["lazy", "emulate"])
@pytest.mark.parametrize("value", ['"yes"', "1", '"true"'])
def test_tri_states_are_true_false_or_auto(tmp_path: Path, key: str, value: str) -> None:
    text = GOOD.replace('address = "192.0.2.10:8022"', f'address = "192.0.2.10:8022"\n{key} = {value}')
    (tmp_path / "id_ed25519").write_text("key")
    with pytest.raises(ConfigError, match=rf"devices\.board.*{key}.*true, false or \"auto\""):
        parse_settings(__import__("tomllib").loads(text), write(tmp_path, text))
