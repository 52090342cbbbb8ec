"""Configuration: one TOML file into typed, frozen settings.

Where the file comes from is decided in exactly one place, :func:`locate_config`:

    1. ``--config FILE`` on the command line
    2. the ``ANDROCOND_CONFIG`` environment variable
    3. ``/etc/androcond/androcond.toml`` if it exists
    4. built-in defaults (no file)

A file named by 1 or 2 must exist; the default path may be absent. Relative paths inside a file are taken
relative to the file's directory. Errors name the file, the key and what was expected, and never echo a
value (it may be a secret).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .protocol.compression import COMPRESS_SETTINGS, CompressSetting

DEFAULT_CONFIG_PATH = Path("/etc/androcond/androcond.toml")
CONFIG_ENV = "ANDROCOND_CONFIG"

LogFormat = Literal["auto", "json", "console"]
TriState = Literal["true", "false", "auto"]
LazyMode = TriState
FreezeMode = Literal["dump", "flat"]
_LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class DaemonSettings:
    state_dir: Path = Path("/var/lib/androcond")
    api: str = "unix:/run/androcond/api.sock"
    api_token: str | None = field(default=None, repr=False)
    shutdown_timeout: float = 8.0
    max_migrations: int = 2
    log_level: str = "info"
    log_format: LogFormat = "auto"


@dataclass(frozen=True)
class TimeoutSettings:
    """Deadlines of a migration's phases, in seconds (table `[timeouts]`). Every wait a peer can stall has
    one; what a deadline ends before the freeze is refused, after it rolled back (or asked of the device)."""

    connect: float = 20.0       # ssh connect and the hello exchange
    preflight: float = 300.0    # inspect, reach the device, its checks, create the target container
    image: float = 3600.0       # ship an image the device lacks (while the source still runs)
    checkpoint: float = 600.0   # the freeze (CRIU dump)
    recode: float = 600.0
    stream: float = 3600.0      # the whole stream, all files
    stream_idle: float = 30.0   # no byte taken by the link and no verdict from the agent for this long
    file_ack: float = 120.0     # the agent's verdict on a file once all of it was sent
    commit: float = 600.0       # the restore on the device
    paging: float = 3600.0      # post-copy: from the resume on the device until its last page arrived
    query: float = 20.0         # one question to the agent ("what became of migration X?")
    settle: float = 60.0        # waiting for a device still busy with a migration before asking again later
    resolve_backoff_max: float = 60.0  # unresolved migrations are asked again, backing off up to this


@dataclass(frozen=True)
class DockerSettings:
    host: str = "unix:///var/run/docker.sock"
    # "runc": freeze through runc directly when safe (much faster), else the engine; "engine": always the engine.
    checkpoint: Literal["runc", "engine"] = "runc"
    runc_root: Path = Path("/run/docker/runtime-runc/moby")  # <exec-root>/runtime-runc/<containerd namespace>


@dataclass(frozen=True)
class Address:
    """HOST:PORT, parsed once here (an IPv6 host in brackets: [::1]:8022)."""

    host: str  # without the brackets
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DeviceSettings:
    name: str
    adb_serial: str | None = None
    address: Address | None = None
    agent_port: int = 8022
    agent_command: str = "androcond agent stdio"
    user: str = "root"
    identity: Path | None = None
    known_hosts: Path | None = None
    profile: str | None = None  # "android": seccomp and LSM fields and mounts Android kernels lack removed
    allow_privileged: bool = False  # a --privileged container may move here (it gets the device's devices)
    # Post-copy (the container resumes before its memory arrives): "true" requires it, "false" never, "auto"
    # when both ends can (the device's userfaultfd and runtime, this host's page server).
    lazy: LazyMode = "false"
    # Across ISAs, an x86_64 container runs on an arm64 device under its qemu-x86_64 (androcond's restorer
    # rebuilds the process there): "true" always, "false" never (only Popcorn binaries move), "auto" when the
    # container has no Popcorn binaries and the device has the emulator.
    emulate: TriState = "auto"
    # File data on the wire: "auto" the best codec both ends have (zstd, else zlib), per chunk only when it
    # shrinks it and while the link is not faster than the compressor (link/compress.py); "zstd" or "zlib" that
    # codec for every chunk (uncompressed, with a warning, when an end lacks it); "none" never.
    compress: CompressSetting = "auto"
    # With post-copy, how the source freezes: "dump" writes the whole memory first (the rollback's copy, inside
    # the downtime); "flat" dumps all but the memory and serves the pages from the frozen tasks, which stay
    # paused here until the device has every page (criu/lazy_dump.py; same-ISA moves from this host).
    freeze: FreezeMode = "dump"


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    secret: str | None = field(default=None, repr=False)
    events: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentSettings:
    docker_host: str = "unix:///var/run/docker.sock"
    spool_dir: Path = Path("/data/androcond/spool")
    listen: Address = Address("0.0.0.0", 8022)  # noqa: S104 - the agent serves the daemon over the network
    host_key: Path = Path("/data/androcond/ssh_host_ed25519_key")
    authorized_keys: Path = Path("/data/androcond/authorized_keys")
    # On SIGTERM, sessions in flight get this long to finish before they are cancelled (and discard).
    shutdown_timeout: float = 30.0
    # The device engine's --exec-root: where runc keeps its containers' states (runtime-<name>/<namespace>/),
    # for the way back's fast freeze through runc.
    exec_root: Path = Path("/run/docker")


@dataclass(frozen=True)
class Settings:
    source: Path | None = None
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    docker: DockerSettings = field(default_factory=DockerSettings)
    devices: Mapping[str, DeviceSettings] = field(default_factory=dict)
    webhooks: tuple[WebhookSettings, ...] = ()
    agent: AgentSettings = field(default_factory=AgentSettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)


def locate_config(cli_path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path | None:
    """Return the config file to read, or None for built-in defaults (precedence: see module doc)."""
    if cli_path is not None:
        return _must_exist(Path(cli_path), "--config")
    env_path = environ.get(CONFIG_ENV)
    if env_path:
        return _must_exist(Path(env_path), CONFIG_ENV)
    if DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return None


def load_settings(cli_path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    path = locate_config(cli_path, os.environ if environ is None else environ)
    if path is None:
        return Settings()
    return parse_settings(_read_toml(path), path)


def _must_exist(path: Path, named_by: str) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path}: config file named by {named_by} does not exist or is not a file")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _type_name(value: object) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


class _Reader:
    """Typed access to one table of the document, with errors that name file and dotted key."""

    def __init__(self, file: Path, where: str, table: Mapping[str, Any], allowed: frozenset[str]) -> None:
        self.file = file
        self.where = where
        self.table = table
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.error(unknown[0], f"unknown key (known keys: {', '.join(sorted(allowed))})")

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.key(name)}: {message}")

    def _typed(self, name: str, kinds: tuple[type, ...], expected: str) -> Any:
        value = self.table[name]
        # bool is an int subclass in Python; TOML keeps them apart, so must we.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"expected {expected}, got {_type_name(value)}")
        if not isinstance(value, kinds):
            raise self.error(name, f"expected {expected}, got {_type_name(value)}")
        return value

    def text(self, name: str, default: str) -> str:
        return default if name not in self.table else self.opt_str(name) or default

    def opt_str(self, name: str) -> str | None:
        if name not in self.table:
            return None
        value: str = self._typed(name, (str,), "a string")
        if not value:
            raise self.error(name, "expected a non-empty string")
        return value

    def number(self, name: str, default: float, *, minimum: float) -> float:
        if name not in self.table:
            return default
        value = float(self._typed(name, (int, float), "a number"))
        if value < minimum:
            raise self.error(name, f"expected a number >= {minimum}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        if name not in self.table:
            return default
        value: bool = self._typed(name, (bool,), "true or false")
        return value

    def port(self, name: str, default: int) -> int:
        if name not in self.table:
            return default
        value: int = self._typed(name, (int,), "an integer port number")
        if not 0 < value < 65536:
            raise self.error(name, "expected a port number between 1 and 65535")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise self.error(name, f"expected one of {', '.join(choices)}")
        return value

    def str_list(self, name: str) -> tuple[str, ...]:
        if name not in self.table:
            return ()
        values: list[Any] = self._typed(name, (list,), "an array of strings")
        if not all(isinstance(v, str) for v in values):
            raise self.error(name, "expected an array of strings")
        return tuple(values)

    def path(self, name: str, default: Path | None = None) -> Path | None:
        value = self.opt_str(name)
        if value is None:
            return default
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.file.parent / p)

    def readable_file(self, name: str) -> Path | None:
        p = self.path(name)
        if p is not None:
            try:
                with p.open("rb"):
                    pass
            except OSError as exc:
                raise self.error(name, f"cannot read file {str(p)!r}: {exc.strerror}") from exc
        return p

    def sub_table(self, name: str) -> Mapping[str, Any]:
        if name not in self.table:
            return {}
        value: Mapping[str, Any] = self._typed(name, (dict,), "a table")
        return value


def _address(reader: _Reader, name: str) -> Address | None:
    value = reader.opt_str(name)
    if value is None:
        return None
    try:
        return Address.parse(value)
    except ValueError as exc:
        raise reader.error(name, str(exc)) from None


def _api(reader: _Reader) -> str:
    value = reader.text("api", DaemonSettings.api)
    if value.startswith("unix:"):
        if not value[len("unix:"):].startswith("/"):
            raise reader.error("api", "expected unix:/ABSOLUTE/PATH or HOST:PORT")
        return value
    _address(reader, "api")
    return value


def parse_settings(doc: Mapping[str, Any], file: Path) -> Settings:
    """Validate a parsed TOML document into :class:`Settings`."""
    top = _Reader(file, "", doc, frozenset({"daemon", "docker", "devices", "webhooks", "agent", "timeouts"}))

    d = _Reader(file, "daemon", top.sub_table("daemon"), frozenset(
        {"state_dir", "api", "api_token", "shutdown_timeout", "max_migrations", "log_level", "log_format"}))
    daemon = DaemonSettings(
        state_dir=d.path("state_dir", DaemonSettings.state_dir) or DaemonSettings.state_dir,
        api=_api(d),
        api_token=d.opt_str("api_token"),
        shutdown_timeout=d.number("shutdown_timeout", DaemonSettings.shutdown_timeout, minimum=0.0),
        max_migrations=int(d.number("max_migrations", DaemonSettings.max_migrations, minimum=1)),
        log_level=d.choice("log_level", DaemonSettings.log_level, _LOG_LEVELS),
        log_format=_log_format(d),
    )
    if not daemon.api.startswith("unix:") and daemon.api_token is None:
        raise d.error("api_token", "required when api is a TCP address (the API can move containers)")

    dk = _Reader(file, "docker", top.sub_table("docker"), frozenset({"host", "checkpoint", "runc_root"}))
    docker = DockerSettings(host=dk.text("host", DockerSettings.host),
                            checkpoint="engine" if dk.choice("checkpoint", "runc", ("runc", "engine")) == "engine"
                            else "runc",
                            runc_root=dk.path("runc_root", DockerSettings.runc_root) or DockerSettings.runc_root)
    if not docker.host.startswith(("unix://", "tcp://", "http://", "https://")):
        raise dk.error("host", "expected a unix:// or tcp:// URL")

    devices: dict[str, DeviceSettings] = {}
    for name, table in top.sub_table("devices").items():
        where = f"devices.{name}"
        if not isinstance(table, dict):
            raise top.error(where, f"expected a table, got {_type_name(table)}")
        if not _DEVICE_NAME.match(name):
            raise top.error(where, "device names are 1-63 letters, digits, '.', '_' or '-'")
        r = _Reader(file, where, table, frozenset(
            {"adb_serial", "address", "agent_port", "agent_command", "user", "identity", "known_hosts",
             "profile", "allow_privileged", "lazy", "emulate", "compress", "freeze"}))
        device = DeviceSettings(
            name=name,
            adb_serial=r.opt_str("adb_serial"),
            address=_address(r, "address"),
            agent_port=r.port("agent_port", DeviceSettings.agent_port),
            agent_command=r.text("agent_command", DeviceSettings.agent_command),
            user=r.text("user", DeviceSettings.user),
            identity=r.readable_file("identity"),
            known_hosts=r.readable_file("known_hosts"),
            profile=r.choice("profile", "android", ("android",)) if "profile" in table else None,
            allow_privileged=r.flag("allow_privileged", False),
            lazy=_tri_state(r, "lazy", "false"),
            emulate=_tri_state(r, "emulate", "auto"),
            compress=_compress(r),
            freeze="flat" if r.choice("freeze", "dump", ("dump", "flat")) == "flat" else "dump",
        )
        if device.freeze == "flat" and device.lazy == "false":
            raise r.error("freeze", "\"flat\" serves the memory after the resume: it needs lazy = true or \"auto\"")
        if device.adb_serial is None and device.address is None:
            raise top.error(where, "a device needs adb_serial or address (neither is set)")
        if device.adb_serial is not None and device.address is not None:
            raise top.error(where, "a device is reached by adb_serial or by address, not both")
        devices[name] = device

    webhooks: list[WebhookSettings] = []
    raw_hooks = doc.get("webhooks", [])
    if not isinstance(raw_hooks, list):
        raise top.error("webhooks", "expected an array of tables ([[webhooks]])")
    for i, table in enumerate(raw_hooks):
        if not isinstance(table, dict):
            raise top.error(f"webhooks[{i}]", "expected a table")
        r = _Reader(file, f"webhooks[{i}]", table, frozenset({"url", "secret", "events"}))
        url = r.opt_str("url")
        if url is None:
            raise r.error("url", "required")
        if not url.startswith(("http://", "https://")):
            raise r.error("url", "expected an http:// or https:// URL")
        webhooks.append(WebhookSettings(url=url, secret=r.opt_str("secret"), events=r.str_list("events")))

    a = _Reader(file, "agent", top.sub_table("agent"), frozenset(
        {"docker_host", "spool_dir", "listen", "host_key", "authorized_keys", "shutdown_timeout", "exec_root"}))
    defaults = AgentSettings()
    agent = AgentSettings(
        docker_host=a.text("docker_host", defaults.docker_host),
        spool_dir=a.path("spool_dir", defaults.spool_dir) or defaults.spool_dir,
        listen=_address(a, "listen") or defaults.listen,
        host_key=a.path("host_key", defaults.host_key) or defaults.host_key,
        authorized_keys=a.path("authorized_keys", defaults.authorized_keys) or defaults.authorized_keys,
        shutdown_timeout=a.number("shutdown_timeout", defaults.shutdown_timeout, minimum=0.0),
        exec_root=a.path("exec_root", defaults.exec_root) or defaults.exec_root,
    )
    return Settings(source=file, daemon=daemon, docker=docker, devices=devices,
                    webhooks=tuple(webhooks), agent=agent, timeouts=_timeouts(top))


def _tri_state(r: _Reader, key: str, default: TriState) -> TriState:
    if key not in r.table:
        return default
    value = r.table[key]
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value == "auto":
        return "auto"
    raise r.error(key, "expected true, false or \"auto\"")


def _compress(r: _Reader) -> CompressSetting:
    value = r.choice("compress", DeviceSettings.compress, COMPRESS_SETTINGS)
    for choice in COMPRESS_SETTINGS:
        if value == choice:
            return choice
    raise AssertionError(value)


def _timeouts(top: _Reader) -> TimeoutSettings:
    names = frozenset(f.name for f in fields(TimeoutSettings))
    t = _Reader(top.file, "timeouts", top.sub_table("timeouts"), names)
    defaults = TimeoutSettings()
    # A zero deadline would fail every migration at once: at least a tenth of a second.
    return TimeoutSettings(**{name: t.number(name, getattr(defaults, name), minimum=0.1) for name in sorted(names)})


def _log_format(reader: _Reader) -> LogFormat:
    value = reader.choice("log_format", "auto", _LOG_FORMATS)
    for choice in _LOG_FORMATS:
        if value == choice:
            return choice
    raise AssertionError(value)
