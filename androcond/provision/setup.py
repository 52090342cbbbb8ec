"""`androcond devices setup` and `remove`: make a rooted device with Docker, CRIU and python3 (with its
cryptography) a target over adb alone, and undo it.

Each step looks before it changes anything, so a second setup changes nothing; what setup changed outside its
own directory (the engine's runtime, runc.conf) is recorded there (`setup.json`), and `remove` puts exactly
that back. The agent's host key is made on the device and its public half read back over adb: adb is an
authenticated channel, so the daemon's known_hosts entry needs no trust on first use.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..agent.device import runtime_path
from ..logging import get_logger
from . import bundle
from .remote import Device, RemoteError

log = get_logger(__name__)

AGENT_FILE: Final = "androcond-agent.pyz"
RUNTIME_FILE: Final = "androcond-runc"
STATE_FILE: Final = "setup.json"
DOCKER_CONFIG: Final = "/etc/docker/daemon.json"
RUNC_CONF: Final = "/etc/criu/runc.conf"
LISTENING_S: Final = 180.0

HOST_KEY_PY: Final = """
import os, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
path = sys.argv[1]
if not os.path.exists(path):
    key = ed25519.Ed25519PrivateKey.generate()
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    os.close(fd)
    os.replace(path + ".new", path)
    print("made")
with open(path, "rb") as f:
    key = serialization.load_ssh_private_key(f.read(), None)
print(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode())
"""

# The engine's daemon.json, keeping everything else in it. `set PATH RUNTIME`: androcond's runtime registered and
# the experimental API on (checkpoints go through it); prints what those keys held before (null: absent) and
# whether the file existed. `undo PATH BEFORE_JSON`: puts back what `set` printed, and removes a file `set`
# created once nothing else is in it. `unregister PATH -`: androcond's runtime out, an empty "runtimes" kept (dockerd
# reloads runtimes on SIGHUP only when the key is there).
ENGINE_CONFIG_PY: Final = """
import json, os, sys
mode, path, arg = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with open(path) as f:
        conf = json.load(f)
    existed = True
except FileNotFoundError:
    conf, existed = {}, False
runtimes = conf.get("runtimes") or {}
current = {"runtime": (runtimes.get("androcond") or {}).get("path"), "experimental": conf.get("experimental")}
if mode == "unregister":  # the runtime out, the key kept: what dockerd's SIGHUP needs to drop it
    if (conf.get("runtimes") or {}).pop("androcond", None) is not None:
        with open(path + ".androcond", "w") as f:
            json.dump(conf, f, indent=2)
        os.replace(path + ".androcond", path)
    sys.exit(0)
if mode == "set":
    wanted = {"runtime": arg, "experimental": True}
    before = dict(current, existed=existed)
else:
    before = json.loads(arg)
    wanted = {k: before.get(k) for k in ("runtime", "experimental")}
if current == wanted:
    print(json.dumps(dict(before, changed=False)))
    sys.exit(0)
if wanted["runtime"] is None:
    runtimes.pop("androcond", None)
else:
    runtimes["androcond"] = {"path": wanted["runtime"]}
conf["runtimes"] = runtimes
if not runtimes:
    conf.pop("runtimes")
conf["experimental"] = wanted["experimental"]
if wanted["experimental"] is None:
    conf.pop("experimental")
if mode == "undo" and not conf and not before.get("existed", True):
    os.remove(path)
else:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".androcond", "w") as f:
        json.dump(conf, f, indent=2)
    os.replace(path + ".androcond", path)
print(json.dumps(dict(before, changed=True)))
"""


@dataclass
class Setup:
    name: str
    directory: str  # on the device
    port: int
    client_public_key: str  # the daemon's, one OpenSSH line
    docker_config: str = DOCKER_CONFIG
    restart_engine: bool = False  # restart the engine even when containers run there, if it must restart
    changes: list[str] = field(default_factory=list)

    @property
    def unit(self) -> str:
        return unit_name(self.name)


def unit_name(device: str) -> str:
    """The agent's systemd unit on the device, named after the device (several daemons may set one up)."""
    return f"androcond-agent-{device}"


async def setup(device: Device, plan: Setup, agent_file: Path) -> str:
    """Make the device a target (`device` rooted: Device.become_root); the agent's public host key (one OpenSSH
    line). `plan.changes` says what changed (empty on a second run)."""
    d = plan.directory
    state = await _state(device, d)
    await device.sh(f"mkdir -p {d}/spool && chmod 700 {d}", "making the agent's directory")
    restart = await _push_if_changed(device, agent_file, f"{d}/{AGENT_FILE}", plan, "the agent file")
    await _push_if_changed(device, runtime_path(), f"{d}/{RUNTIME_FILE}", plan, "the runtime", mode="755")
    made_and_key = (await device.python(HOST_KEY_PY, f"{d}/agent_host_key", what="making the host key")).split()
    if made_and_key and made_and_key[0] == "made":
        plan.changes.append("made the agent's host key on the device")
        made_and_key = made_and_key[1:]
    host_key = " ".join(made_and_key[:2])
    config = (f'[agent]\ndocker_host = "unix:///run/docker.sock"\nspool_dir = "{d}/spool"\n'
              f'listen = "127.0.0.1:{plan.port}"\nhost_key = "{d}/agent_host_key"\n'
              f'authorized_keys = "{d}/authorized_keys"\n')
    restart |= await _write_if_changed(device, f"{d}/agent.toml", config, plan, "the agent's config")
    restart |= await _write_if_changed(device, f"{d}/authorized_keys", plan.client_public_key.strip() + "\n", plan,
                                       "the daemon's key in authorized_keys")
    answer = json.loads(await device.python(ENGINE_CONFIG_PY, "set", plan.docker_config, f"{d}/{RUNTIME_FILE}",
                                            what="registering the runtime"))
    if answer.pop("changed"):
        state.setdefault("engine_before", answer)  # the first run's: what the device had before androcond
        await _save_state(device, d, state)  # before anything can fail: `remove` must know what to put back
        plan.changes.append(f"registered androcond's runtime and the experimental API in {plan.docker_config}")
        await _reload_engine(device)
    await _experimental_on(device, plan)
    added = await device.sh(f"[ -d {Path(RUNC_CONF).parent} ] || echo made-dir; mkdir -p {Path(RUNC_CONF).parent}; "
                            f"[ -e {RUNC_CONF} ] || echo created; "
                            f"touch {RUNC_CONF}; "
                            f"if ! grep -qx tcp-close {RUNC_CONF}; then echo tcp-close >> {RUNC_CONF}; echo added; fi",
                            "adding tcp-close to runc.conf")
    if "added" in added:
        state["runc_conf_added"] = True
        state.setdefault("runc_conf_created", "created" in added)
        state.setdefault("criu_dir_created", "made-dir" in added)
        plan.changes.append(f"added tcp-close to {RUNC_CONF}")
    state["service"] = await _service(device, plan, restart)
    await _save_state(device, d, state)
    await _until_listening(device, plan.port)
    return host_key


async def remove(device: Device, directory: str, name: str, docker_config: str = DOCKER_CONFIG) -> list[str]:
    """Undo what setup did on the device (`device` rooted: Device.become_root); what was undone."""
    state = await _state(device, directory)
    undone: list[str] = []
    unit = unit_name(name)
    if state.get("service") == "systemd":
        await device.sh(f"systemctl disable --now {unit} 2>/dev/null; rm -f /etc/systemd/system/{unit}.service; "
                        "systemctl daemon-reload", "removing the agent's service")
        undone.append(f"stopped and removed {unit}.service")
    elif state.get("service") == "started":
        await device.sh(f"[ -f {directory}/agent.pid ] && kill $(cat {directory}/agent.pid) 2>/dev/null; true",
                        "stopping the agent")
        undone.append("stopped the agent")
    before = state.get("engine_before")
    if isinstance(before, dict):
        undone += await _engine_back(device, docker_config, before)
    if state.get("runc_conf_added"):
        created = f"[ -s {RUNC_CONF} ] || rm -f {RUNC_CONF}" if state.get("runc_conf_created") else "true"
        if state.get("criu_dir_created"):
            created += f"; rmdir {Path(RUNC_CONF).parent} 2>/dev/null; true"
        await device.sh(f"grep -vx tcp-close {RUNC_CONF} > {RUNC_CONF}.androcond; "
                        f"mv {RUNC_CONF}.androcond {RUNC_CONF}; {created}", "removing tcp-close from runc.conf")
        undone.append(f"removed tcp-close from {RUNC_CONF}")
    await device.sh(f"rm -rf {directory}", "removing the agent's directory")
    undone.append(f"removed {directory}")
    return undone


async def _engine_back(device: Device, docker_config: str, before: dict[str, object]) -> list[str]:
    """daemon.json as it was before setup, and the running engine as it was: restarted when setup turned its
    experimental API on and no container runs there; else only the runtime unregistered (SIGHUP), and told."""
    idle = not (await device.sh("docker ps -q 2>/dev/null; true", "listing the engine's containers")).split()
    can_restart = idle and await _engine_is_systemd_service(device)
    restart = before.get("experimental") is not True and can_restart
    if not restart:
        await device.python(ENGINE_CONFIG_PY, "unregister", docker_config, "-", what="unregistering the runtime")
        await _reload_engine(device)
    answer = json.loads(await device.python(ENGINE_CONFIG_PY, "undo", docker_config, json.dumps(before),
                                            what="restoring daemon.json"))
    if not answer["changed"]:
        return []
    done = [f"put the runtime and the experimental API in {docker_config} back as they were"]
    if restart:
        await device.sh("systemctl restart docker", "restarting the engine")
        done.append("restarted the engine (no container ran there): its experimental API is off again")
    elif before.get("experimental") is not True:
        done.append("the engine keeps its experimental API on until dockerd restarts (containers run there)")
    return done


async def _engine_is_systemd_service(device: Device) -> bool:
    return "yes" in await device.sh("command -v systemctl >/dev/null && systemctl is-active -q docker && echo yes; "
                                    "true", "looking for the engine's service")


async def _reload_engine(device: Device) -> None:
    """dockerd rereads its runtimes on SIGHUP: no restart, so no running container stops."""
    await device.sh("kill -HUP $(pidof dockerd)", "reloading the engine's configuration")


async def _experimental_on(device: Device, plan: Setup) -> None:
    """dockerd reads `experimental` only when it starts (SIGHUP leaves it as it was; seen with Docker 26): when
    it is off, the engine restarts — at once when no container runs there, else only when asked, as a restart
    stops them all and starts again only those with a restart policy."""
    if (await device.sh("docker version --format '{{.Server.Experimental}}'", "asking the engine")).strip() == "true":
        return
    running = len((await device.sh("docker ps -q", "listing the engine's containers")).split())
    if running and not plan.restart_engine:
        raise RemoteError(f"the engine must restart to turn its experimental API on (dockerd reads it only at start) "
                          f"and {running} container(s) run there: run setup again with --restart-engine (they stop; "
                          "those with a restart policy start again)")
    if not await _engine_is_systemd_service(device):
        raise RemoteError("the engine must restart to turn its experimental API on (dockerd reads it only at "
                          "start), and it is not a systemd service here: restart dockerd, then run setup again")
    await device.sh("systemctl restart docker", "restarting the engine")
    plan.changes.append(f"restarted the engine (its experimental API on; {running} container(s) were running)")


async def _save_state(device: Device, directory: str, state: dict[str, object]) -> None:
    await _write_if_changed(device, f"{directory}/{STATE_FILE}", json.dumps(state, indent=2, sort_keys=True) + "\n",
                            None, "")


async def _state(device: Device, directory: str) -> dict[str, object]:
    text = await device.sh(f"cat {directory}/{STATE_FILE} 2>/dev/null; true", "reading setup's record")
    try:
        loaded = json.loads(text) if text.strip() else {}
    except ValueError:
        loaded = {}
    return loaded if isinstance(loaded, dict) else {}


async def _remote_sha256(device: Device, path: str) -> str:
    out = await device.sh(f"sha256sum {path} 2>/dev/null; true", f"hashing {path}")
    return out.split()[0] if out.split() else ""


async def _push_if_changed(device: Device, local: Path, remote: str, plan: Setup, what: str, *,
                           mode: str = "644") -> bool:
    data = await asyncio.to_thread(local.read_bytes)
    digest = hashlib.sha256(data).hexdigest()
    if await _remote_sha256(device, remote) == digest:
        return False
    # adbd writes the file as its own user: through su, it lands where that user may write, then moves as root.
    staged = "/data/local/tmp/" + Path(remote).name + ".new" if device.via_su else remote + ".new"
    await device.adb.push(device.serial, local, staged)
    await device.sh(f"mv {staged} {remote} && chmod {mode} {remote}", f"installing {what}")
    plan.changes.append(f"installed {what} ({len(data)} bytes)")
    return True


async def _write_if_changed(device: Device, remote: str, text: str, plan: Setup | None, what: str) -> bool:
    current = await device.sh(f"cat {remote} 2>/dev/null; true", f"reading {remote}")
    if current == text:
        return False
    script = (f"cat > {remote}.new <<'ANDROCOND_EOF'\n{text}ANDROCOND_EOF\n"
              f"chmod 600 {remote}.new && mv {remote}.new {remote}")
    await device.sh(script, f"writing {remote}")
    if plan is not None:
        plan.changes.append(f"wrote {what}")
    return True


async def _service(device: Device, plan: Setup, restart: bool) -> str:
    """Started now, and again after a reboot: a systemd unit where the device has systemd, else started here
    (a root manager's boot script is documented in docs/android.md)."""
    d = plan.directory
    command = f"/usr/bin/env python3 {d}/{AGENT_FILE} agent serve --config {d}/agent.toml"
    has_systemd = "yes" in await device.sh("[ -d /run/systemd/system ] && command -v systemctl >/dev/null && "
                                           "echo yes; true", "looking for systemd")
    if has_systemd:
        unit = (f"[Unit]\nDescription=androcond agent ({plan.name}, set up by androcond devices setup)\n"
                "After=docker.service\n[Service]\n"
                f"ExecStart={command}\nRestart=on-failure\nKillMode=process\n[Install]\nWantedBy=multi-user.target\n")
        changed = await _write_if_changed(device, f"/etc/systemd/system/{plan.unit}.service", unit, plan,
                                          f"the {plan.unit} service")
        verb = "restart" if changed or restart else "start"
        await device.sh(f"systemctl daemon-reload && systemctl enable {plan.unit} 2>/dev/null && "
                        f"systemctl {verb} {plan.unit}", "starting the agent")
        return "systemd"
    running = await device.sh(f"[ -f {d}/agent.pid ] && kill -0 $(cat {d}/agent.pid) 2>/dev/null && echo yes; true",
                              "looking for the agent")
    if "yes" in running and not restart:
        return "started"
    await device.sh(f"[ -f {d}/agent.pid ] && kill $(cat {d}/agent.pid) 2>/dev/null; "
                    f"setsid {command} >{d}/agent.log 2>&1 </dev/null & echo $! > {d}/agent.pid", "starting the agent")
    plan.changes.append("started the agent")
    return "started"


async def _until_listening(device: Device, port: int) -> None:
    needle = f":{port:04X} 00000000:0000 0A"  # LISTEN in /proc/net/tcp
    # No readiness signal crosses adb: the device's shell polls its socket table, up to the deadline.
    await device.sh(f"i=0; until grep -q '{needle}' /proc/net/tcp; do i=$((i + 1)); "
                    f"[ $i -lt {int(LISTENING_S)} ] || exit 1; sleep 1; done", "waiting for the agent to listen")


def agent_file(directory: Path) -> Path:
    """The agent file for this androcond (blocking)."""
    out = directory / AGENT_FILE
    bundle.build(out)
    return out


__all__ = ["Device", "RemoteError", "Setup", "agent_file", "remove", "setup"]
