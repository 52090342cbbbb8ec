"""`androcond devices doctor`: what a device has of what androcond needs there, read over adb alone (no agent).

One shell script gathers everything in a single round trip (a phone's adbd answers slowly; an emulated one more
so): the user, the kernel and its configuration (/proc/config.gz, else /boot/config-<release>), the address
space, the engine and its runtimes, CRIU and `criu check`, runc.conf, free space, Python with `cryptography`
(what the agent runs on) and qemu-x86_64. `assess()` turns its output into requirements, each with its state,
what fails without it and the fix; it is pure, so what a stock GKI kernel gets is tested without one.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Final

from ..criu import compat as criu_compat

# Sections of the probe's output: a line "@@name" starts each.
PROBE: Final = r"""
echo @@id; id -u
echo @@uname; uname -m; uname -r
echo @@config
if [ -r /proc/config.gz ]; then
  echo source=/proc/config.gz; gzip -dc /proc/config.gz 2>/dev/null || zcat /proc/config.gz
elif [ -r "/boot/config-$(uname -r)" ]; then echo "source=/boot/config-$(uname -r)"; cat "/boot/config-$(uname -r)"
fi
echo @@maps; cat /proc/self/maps
echo @@docker; docker version --format '{{.Server.Version}} {{.Server.APIVersion}}' 2>&1
echo @@experimental; docker version --format '{{.Server.Experimental}}' 2>/dev/null
echo @@runtimes; docker info --format '{{json .Runtimes}}' 2>/dev/null
echo @@dockerroot; docker info --format '{{.DockerRootDir}}' 2>/dev/null
echo @@criu; criu --version 2>&1 | head -1
echo @@criucheck; criu check 2>&1 | tail -3
echo @@runcconf; cat /etc/criu/runc.conf 2>/dev/null
echo @@df; df -Pk "$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /)" 2>/dev/null | tail -1
echo @@python; python3 -c 'import sys, cryptography; print(sys.version.split()[0], cryptography.__version__)' 2>&1
echo @@qemu
for q in qemu-x86_64-static qemu-x86_64 /usr/bin/qemu-x86_64-static /usr/bin/qemu-x86_64; do
  command -v "$q" 2>/dev/null && break
done
echo @@agent
for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f" 2>/dev/null; echo; done | grep 'androcond.* agent serve' | \
  grep -v grep | head -1
echo @@end
"""

ADDRESS_BITS_NEEDED: Final = 48  # an x86_64 stack lives at 0x7ffc…: a 39-bit arm64 kernel cannot map it
FREE_BYTES_WANTED: Final = 2 << 30


class State(StrEnum):
    OK = "ok"
    MISSING = "missing"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Requirement:
    name: str
    state: State
    detail: str  # what was found
    blocks: str  # what fails without it
    fix: str  # how to get it ("" when it is there)


# Kernel options: (option, what fails without it, the fix).
KERNEL_OPTIONS: Final = (
    ("CHECKPOINT_RESTORE", "every move (CRIU cannot dump or restore)", "CONFIG_CHECKPOINT_RESTORE=y"),
    ("NAMESPACES", "every container", "CONFIG_NAMESPACES=y"),
    ("PID_NS", "every container (Docker gives each its own PID namespace; a stock GKI kernel lacks it)",
     "CONFIG_PID_NS=y"),
    ("NET_NS", "every container with its own network", "CONFIG_NET_NS=y"),
    ("IPC_NS", "every container", "CONFIG_IPC_NS=y"),
    ("UTS_NS", "every container", "CONFIG_UTS_NS=y"),
    ("CGROUPS", "every container", "CONFIG_CGROUPS=y"),
    ("MEMCG", "containers with a memory limit", "CONFIG_MEMCG=y"),
    ("OVERLAY_FS", "every move (the writable layer is placed on overlay2)", "CONFIG_OVERLAY_FS=y"),
    ("USERFAULTFD", "post-copy moves (lazy = true)", "CONFIG_USERFAULTFD=y"),
    ("BINFMT_MISC", "`docker exec` in a container running emulated", "CONFIG_BINFMT_MISC=y"),
)


def sections(output: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("@@"):
            current = found.setdefault(line[2:].strip(), [])
        elif current is not None:
            current.append(line)
    return found


def kernel_config(lines: list[str]) -> tuple[str, dict[str, str]]:
    """(where it came from, option → value) of a kernel configuration; ("", {}) when none was readable."""
    source = ""
    options: dict[str, str] = {}
    for line in lines:
        if line.startswith("source="):
            source = line.removeprefix("source=")
        elif match := re.match(r"^CONFIG_(\w+)=(.*)$", line):
            options[match[1]] = match[2]
        elif match := re.match(r"^# CONFIG_(\w+) is not set$", line):
            options[match[1]] = "n"
    return source, options


def assess(output: str, host_criu_options: list[str]) -> list[Requirement]:
    """The requirements, from the probe's output; `host_criu_options` are what this host's CRIU dumps with (its
    runc.conf), which the device's restores must carry too."""
    s = sections(output)
    if "end" not in s:
        return [Requirement("probe", State.UNKNOWN, "the device's shell did not run the whole probe", "everything",
                            "check that `adb shell` works and its shell is a POSIX sh")]
    out: list[Requirement] = []
    uid = (s.get("id") or ["?"])[0].strip()
    out.append(Requirement("root", State.OK if uid == "0" else State.MISSING, f"uid {uid}",
                           "everything (the agent runs CRIU and the engine as root)",
                           "" if uid == "0" else "run adbd as root (`adb root`) or install a root manager's su"))
    uname = s.get("uname") or ["?", "?"]
    machine = uname[0].strip()
    out.append(Requirement("isa", State.OK if machine in ("aarch64", "x86_64") else State.MISSING,
                           f"{machine}, kernel {uname[1].strip() if len(uname) > 1 else '?'}",
                           "every move (androcond moves to aarch64 and x86_64)", ""))
    source, config = kernel_config(s.get("config") or [])
    for option, blocks, fix in KERNEL_OPTIONS:
        if not config:
            out.append(Requirement(f"kernel {option}", State.UNKNOWN, "no /proc/config.gz or /boot/config-*",
                                   blocks, "enable CONFIG_IKCONFIG_PROC to let doctor read the configuration"))
            continue
        value = config.get(option, "n")
        ok = value in ("y", "m")
        out.append(Requirement(f"kernel {option}", State.OK if ok else State.MISSING,
                               f"CONFIG_{option}={value} ({source})", blocks, "" if ok else fix))
    bits = criu_compat.address_bits(criu_compat.highest_user_address("\n".join(s.get("maps") or [])))
    out.append(Requirement("address bits", State.OK if bits >= ADDRESS_BITS_NEEDED else State.MISSING,
                           f"{bits}-bit user addresses", "moves of x86_64 containers (their stack sits at 0x7ffc…)",
                           "" if bits >= ADDRESS_BITS_NEEDED else "build the kernel with CONFIG_ARM64_VA_BITS_48=y"))
    out += _engine(s)
    out += _criu(s, host_criu_options)
    out += _rest(s)
    return out


def _engine(s: dict[str, list[str]]) -> list[Requirement]:
    docker = " ".join(s.get("docker") or []).strip()
    match = re.match(r"^(\S+) (\d+\.\d+)$", docker)
    found = f"Docker {docker}" if match else docker or "none"
    out = [Requirement("engine", State.OK if match else State.MISSING, found, "every move",
                       "" if match else "install Docker and start dockerd")]
    experimental = " ".join(s.get("experimental") or []).strip()
    on = experimental == "true"
    out.append(Requirement("engine experimental", State.OK if on else (State.MISSING if match else State.UNKNOWN),
                           experimental or "unknown",
                           "every move (checkpoints and restores from them are the engine's experimental API)",
                           "" if on else 'androcond devices setup (or "experimental": true in the engine\'s '
                                         "daemon.json, then restart dockerd: SIGHUP does not reread it)"))
    runtimes = " ".join(s.get("runtimes") or []).strip()
    try:
        names = set(json.loads(runtimes)) if runtimes else set()
    except ValueError:
        names = set()
    has = "androcond" in names
    out.append(Requirement("androcond runtime", State.OK if has else State.MISSING,
                           ", ".join(sorted(names)) or "unknown",
                           "restores in place (the engine copies the images twice without it) and post-copy",
                           "" if has else 'register androcond-runc in the engine\'s daemon.json ("runtimes") and '
                                          "send dockerd SIGHUP"))
    return out


def _criu(s: dict[str, list[str]], host_options: list[str]) -> list[Requirement]:
    version = " ".join(s.get("criu") or []).strip()
    has = version.startswith("Version:")
    out = [Requirement("criu", State.OK if has else State.MISSING, version or "none", "every move",
                       "" if has else "install CRIU (4.x) where runc finds it")]
    check = " ".join(s.get("criucheck") or []).strip()
    good = "Looks good" in check
    out.append(Requirement("criu check", State.OK if good else (State.MISSING if has else State.UNKNOWN),
                           check[-200:] or "not run", "every move (what it names is missing in the kernel)",
                           "" if good else "see what `criu check` names"))
    conf = [line.strip() for line in s.get("runcconf") or [] if line.strip() and not line.startswith("#")]
    lacking = criu_compat.restore_needs(host_options, conf)
    out.append(Requirement(f"{criu_compat.RUNC_CONF}", State.OK if not lacking else State.MISSING,
                           "has " + ", ".join(conf) if conf else "absent or empty",
                           "every move (this host dumps with what it lacks; preflight refuses the device)",
                           "" if not lacking else f"add {' and '.join(lacking)} to {criu_compat.RUNC_CONF}"))
    return out


def _rest(s: dict[str, list[str]]) -> list[Requirement]:
    out = []
    df = " ".join(s.get("df") or []).split()
    free = int(df[3]) * 1024 if len(df) > 3 and df[3].isdigit() else -1
    out.append(Requirement("free space", State.UNKNOWN if free < 0 else
                           (State.OK if free >= FREE_BYTES_WANTED else State.MISSING),
                           f"{free >> 20} MiB free under the engine's root" if free >= 0 else "unknown",
                           "moves of containers larger than what is free", "" if free >= FREE_BYTES_WANTED
                           else "free space where the engine keeps its data"))
    python = " ".join(s.get("python") or []).strip()
    ok = bool(re.match(r"^3\.\d+\S* \S+$", python))
    out.append(Requirement("python3 with cryptography", State.OK if ok else State.MISSING,
                           python[-200:] or "none", "the agent (androcond runs on the device's own Python)",
                           "" if ok else "install python3 and python3-cryptography (Termux: python, "
                                         "python-cryptography)"))
    agent = " ".join(s.get("agent") or []).strip()
    out.append(Requirement("agent", State.OK if agent else State.MISSING, agent[-200:] or "not running",
                           "every move (nothing on the device answers the daemon)",
                           "" if agent else "androcond devices setup NAME --adb SERIAL"))
    qemu = " ".join(s.get("qemu") or []).strip()
    out.append(Requirement("qemu-x86_64", State.OK if qemu else State.MISSING, qemu or "none",
                           "x86_64 containers that are not Popcorn binaries (they run emulated)",
                           "" if qemu else "install a static qemu-x86_64 (Debian: qemu-user-static)"))
    return out


def as_json(requirements: list[Requirement]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in asdict(r).items()} for r in requirements]
