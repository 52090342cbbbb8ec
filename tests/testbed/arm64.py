"""An arm64 device for the test bed: Debian trixie for arm64 under qemu-system-aarch64 (TCG), running Docker,
CRIU, adbd, OpenSSH and androcond's agent, reached from the host through qemu's user-mode network.

`ensure_image()` builds the disk image once and caches it outside the checkout, under CACHE_DIR:

- `arm64-base-<hash of arm64-rootfs.sh>/rootfs`: the root tree (debootstrap through binfmt, then Docker and
  adbd; about 11 min on 2 cores). Built once per recipe.
- `arm64-base-<…>/wheels-<hash of the pins>`: the agent's runtime dependencies as aarch64 wheels for the guest's
  Python 3.13, downloaded on the host (the guest has no network), pinned to the versions the host runs.
- `arm64-<hash of base, wheels, androcond's sources and this recipe>/`: `disk.img` (8 GiB sparse ext4 made with
  `mkfs.ext4 -d` from the tree with androcond and the guest's units laid over it by overlayfs, so the tree stays
  as debootstrap left it), `vmlinuz`, `initrd.img`. Rebuilt in about a minute when androcond changes.

Keys are per device, not in the image: each `Arm64Device` writes a small seed disk (ext4, second virtio drive)
with the ssh host key, the client's authorized_keys and the agent's config and host key; the guest's
`androcond-seed.service` applies it at boot, then sshd (22), adbd (tcp:5555) and `androcond agent serve` (8022)
start. The guest boots from a qcow2 overlay of the cached image, so the image itself is never written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from .device import ADB, AdbServer
from .proc import TestBedError, alive, run, start_daemon, stop_pid, tail, wait_for
from .system import require

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent
ROOTFS_SCRIPT = HERE / "arm64-rootfs.sh"
CACHE_DIR = Path(os.environ.get("ANDROCOND_ARM64_CACHE", "/var/cache/androcond"))
GUEST_PYTHON = "3.13"
GUEST_SITE = f"usr/local/lib/python{GUEST_PYTHON}/dist-packages"
# The guest has glibc 2.41: any of these manylinux wheels runs there.
WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64",
                   "manylinux_2_39_aarch64")
DISK_SIZE = 8 << 30
SEED_SIZE = 16 << 20
# What building and booting the device needs on the host (scripts/system-packages.txt names what each provides).
HOST_PACKAGES = ("qemu-system-arm", "ipxe-qemu", "qemu-user-static", "qemu-utils", "binfmt-support", "debootstrap",
                 "e2fsprogs")
QEMU = "/usr/bin/qemu-system-aarch64"
GUEST_SSH_PORT = 22
GUEST_ADBD_PORT = 5555
GUEST_AGENT_PORT = 8022
BUILD_TIMEOUT_S = 3600.0
BOOT_TIMEOUT_S = float(os.environ.get("ANDROCOND_ARM64_BOOT_TIMEOUT", "420"))
RUNC_WRAPPER = f"/{GUEST_SITE}/androcond/agent/runtime/androcond-runc"

# --- what the image adds to the root tree --------------------------------------------------------------------

SEED_SCRIPT = """#!/bin/sh
# androcond's arm64 test device: apply this boot's seed disk (the second virtio drive, ext4 labelled
# androcond-seed): the ssh host key, root's authorized_keys, the agent's config and host key. Then the network
# of qemu's user-mode stack (the guest is 10.0.2.15; the host's forwards arrive there).
set -eu
seed=/run/androcond-seed
wait_for() {  # up to 30 s: udev may still be probing the drive and loading virtio_net
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -lt 150 ] || { echo "androcond-seed: gave up waiting for: $*"; exit 1; }
        sleep 0.2
    done
}
wait_for blkid -L androcond-seed
mkdir -p "$seed"
mountpoint -q "$seed" || mount -o ro LABEL=androcond-seed "$seed"
install -d -m 700 /root/.ssh /etc/androcond
install -m 600 "$seed/authorized_keys" /root/.ssh/authorized_keys
install -m 600 "$seed/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
install -m 644 "$seed/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
# A bare device's seed has no agent: `androcond devices setup` brings it over adb.
if [ -f "$seed/agent.toml" ]; then
    install -m 600 "$seed/agent.toml" /etc/androcond/agent.toml
    install -m 600 "$seed/agent_host_key" /etc/androcond/agent_host_key
fi
umount "$seed"
modprobe virtio_net 2>/dev/null || true
wait_for test -e /sys/class/net/eth0
ip link set lo up
ip link set eth0 up
ip addr replace 10.0.2.15/24 dev eth0
ip route replace default via 10.0.2.2
echo "androcond-seed: applied"
"""

SEED_UNIT = """[Unit]
Description=androcond test device: keys and config from the seed disk, network
DefaultDependencies=no
After=local-fs.target systemd-udev-trigger.service
Wants=local-fs.target
Before=ssh.service docker.service androcond-adbd.service androcond-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/androcond-seed
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

ADBD_UNIT = """[Unit]
Description=adbd on tcp:5555 (androcond test device)
Requires=androcond-seed.service
After=androcond-seed.service

[Service]
ExecStart=/usr/sbin/adbd
Restart=on-failure
RestartSec=1

[Install]
WantedBy=multi-user.target
"""

AGENT_UNIT = """[Unit]
Description=androcond agent serve (androcond test device)
Requires=androcond-seed.service docker.service
After=androcond-seed.service docker.service

[Service]
ExecStart=/usr/bin/python3 -m androcond agent serve --config /etc/androcond/agent.toml
# A post-copy restore's page keeper must outlive the agent (docs/post-copy.md): stop only the agent itself.
KillMode=process
Restart=on-failure
RestartSec=2
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

SSH_DROPIN = """[Unit]
Requires=androcond-seed.service
After=androcond-seed.service
"""

SSHD_CONFIG = """HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
"""

GUEST_AGENT_CONFIG = f"""[daemon]
log_format = "json"
log_level = "debug"
[agent]
docker_host = "unix:///run/docker.sock"
spool_dir = "/var/lib/androcond/spool"
listen = "0.0.0.0:{GUEST_AGENT_PORT}"
host_key = "/etc/androcond/agent_host_key"
authorized_keys = "/root/.ssh/authorized_keys"
"""

DAEMON_JSON = {"experimental": True, "runtimes": {"androcond": {"path": RUNC_WRAPPER}}}

GUEST_FILES: dict[str, tuple[str, int]] = {
    "usr/local/sbin/androcond-seed": (SEED_SCRIPT, 0o755),
    "etc/systemd/system/androcond-seed.service": (SEED_UNIT, 0o644),
    "etc/systemd/system/androcond-adbd.service": (ADBD_UNIT, 0o644),
    "etc/systemd/system/androcond-agent.service": (AGENT_UNIT, 0o644),
    "etc/systemd/system/ssh.service.d/androcond.conf": (SSH_DROPIN, 0o644),
    "etc/ssh/sshd_config.d/androcond.conf": (SSHD_CONFIG, 0o644),
    "etc/docker/daemon.json": (json.dumps(DAEMON_JSON, indent=2) + "\n", 0o644),
    # As on the host (scripts/install-system.sh): runc hands CRIU tcp-close, so dumps made with it restore here.
    "etc/criu/runc.conf": ("tcp-close\n", 0o644),
    "etc/hostname": ("androcond-arm64\n", 0o644),
}
MASKED_UNITS = ("adbd.service",)
ENABLED_UNITS = ("androcond-seed.service", "androcond-adbd.service", "androcond-agent.service",
                 "docker.service", "ssh.service")

# The bare variant: what a person's device has before `androcond devices setup` — Docker (its stock
# configuration, no daemon.json), CRIU, adbd, python3 with cryptography — and nothing of androcond: no agent,
# no keys of it, no runtime, no runc.conf. (The tree has no python3-cryptography package; the pinned wheels of
# cryptography and cffi stand in for it, installed where Debian's python3 finds them.)
BARE_LEFT_OUT = ("etc/systemd/system/androcond-agent.service", "etc/docker/daemon.json", "etc/criu/runc.conf")
BARE_GUEST_FILES = {rel: spec for rel, spec in GUEST_FILES.items() if rel not in BARE_LEFT_OUT}
BARE_ENABLED_UNITS = tuple(u for u in ENABLED_UNITS if u != "androcond-agent.service")
BARE_WHEELS = ("cryptography", "cffi", "pycparser")


# --- the image -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm64Image:
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "disk.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def done(self) -> Path:
        return self.directory / ".done"


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:12]


def base_dir() -> Path:
    # The plain sha256 of the script (`sha256sum arm64-rootfs.sh`): a tree can be built by hand under this name.
    return CACHE_DIR / f"arm64-base-{hashlib.sha256(ROOTFS_SCRIPT.read_bytes()).hexdigest()[:12]}"


def base_rootfs() -> Path:
    return base_dir() / "rootfs"


def base_built() -> bool:
    """The slow part (the root tree, about 11 min) is in the cache."""
    return (base_rootfs() / ".stage-packages").exists()


def runtime_pins() -> list[str]:
    """The agent's dependencies (`[project] dependencies`: what `pip install androcond` brings to a device; the
    `daemon` extra stays on the host), pinned to the versions this (host) Python runs where it has them."""
    deps: list[str] = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        name = re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(dep)
    return pins


def _source_files() -> Iterator[Path]:
    yield CHECKOUT / "pyproject.toml"
    yield CHECKOUT / "README.md"
    for path in sorted((CHECKOUT / "androcond").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def _sources_digest() -> str:
    return _digest(*(f"{p.relative_to(CHECKOUT)}\0".encode() + p.read_bytes() for p in _source_files()))


def image_key() -> str:
    recipe = json.dumps({"files": GUEST_FILES, "units": ENABLED_UNITS, "masked": MASKED_UNITS, "disk": DISK_SIZE},
                        sort_keys=True)
    return _digest(base_dir().name, _wheels_dir().name, _sources_digest(), recipe)


def _wheels_dir() -> Path:
    return base_dir() / f"wheels-{_digest(json.dumps([runtime_pins(), WHEEL_PLATFORMS, GUEST_PYTHON]))}"


def current_image() -> Arm64Image:
    return Arm64Image(CACHE_DIR / f"arm64-{image_key()}")


def bare_image_key() -> str:
    recipe = json.dumps({"files": BARE_GUEST_FILES, "units": BARE_ENABLED_UNITS, "masked": MASKED_UNITS,
                         "wheels": BARE_WHEELS, "disk": DISK_SIZE}, sort_keys=True)
    return _digest(base_dir().name, _wheels_dir().name, recipe)


def current_bare_image() -> Arm64Image:
    return Arm64Image(CACHE_DIR / f"arm64-bare-{bare_image_key()}")


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / "arm64.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_host_tools() -> None:
    """qemu (with its virtio-net ROM), qemu-user-static through binfmt, debootstrap, mkfs.ext4 — or an error
    naming the missing packages (scripts/install-system.sh installs them)."""
    require(HOST_PACKAGES)


def ensure_binfmt() -> None:
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
    if not (binfmt / "qemu-aarch64").exists():
        run(["update-binfmts", "--enable", "qemu-aarch64"])
    if "enabled" not in (binfmt / "qemu-aarch64").read_text():
        raise TestBedError("binfmt_misc's qemu-aarch64 entry is disabled: arm64 programs cannot run on this host")


Progress = Callable[[str], None]


def _silent(_: str) -> None:
    pass


# The root tree's stages (arm64-rootfs.sh leaves each marker when done): what it does, what to expect.
ROOTFS_STAGES = ((".stage-debootstrap", "debootstrap of Debian trixie for arm64 through qemu-user",
                  "about 12 min on 2 cores"),
                 (".stage-packages", "Docker, adbd and qemu-user into that tree", "about 2 min"))


def ensure_image(progress: Progress = _silent, log_dir: Path | None = None) -> Arm64Image:
    """The current image, built if not cached yet (idempotent; concurrent callers wait for each other).
    `progress` gets a line per stage of a build; each stage's output goes to a log in `log_dir`."""
    ensure_host_tools()
    with _cache_lock():
        image = current_image()
        if image.done.exists():
            progress(f"arm64 image: cached ({image.directory})")
            return image
        base = base_dir()
        base.mkdir(parents=True, exist_ok=True)
        ensure_binfmt()
        if not base_built():
            _build_rootfs((log_dir or base) / "arm64-rootfs.log", progress)
        started = time.monotonic()
        progress("arm64 image: the agent's dependencies as aarch64 wheels (under a minute)")
        wheels = _download_wheels()
        progress("arm64 image: androcond laid over the tree, then the 8 GiB disk (about a minute)")
        _build_image(image, wheels)
        progress(f"arm64 image: ready in {time.monotonic() - started:.0f}s ({image.directory})")
        _drop_old_images("arm64-", image)
        return image


def ensure_bare_image(progress: Progress = _silent, log_dir: Path | None = None) -> Arm64Image:
    """The bare variant (BARE_GUEST_FILES), built from the same root tree and wheels if not cached yet."""
    ensure_image(progress, log_dir)  # the root tree and the wheels
    with _cache_lock():
        image = current_bare_image()
        if image.done.exists():
            return image
        started = time.monotonic()
        progress("arm64 bare image: the tree with python3's cryptography and nothing of androcond (a minute)")
        _build_image(image, _download_wheels(), bare=True)
        progress(f"arm64 bare image: ready in {time.monotonic() - started:.0f}s ({image.directory})")
        _drop_old_images("arm64-bare-", image)
        return image


def _drop_old_images(prefix: str, current: Arm64Image) -> None:
    """Earlier images of this kind (full: arm64-<key>, bare: arm64-bare-<key>) that no qemu boots from."""
    for old in CACHE_DIR.glob(f"{prefix}*"):
        rest = old.name.removeprefix(prefix)
        if old == current.directory or not old.is_dir() or (prefix == "arm64-" and "-" in rest):
            continue
        if not _in_use(old):
            shutil.rmtree(old, ignore_errors=True)


def _build_rootfs(build_log: Path, progress: Progress) -> None:
    """Run arm64-rootfs.sh with its output in build_log, reporting each stage as its marker appears (and a
    line a minute while one runs, so a long stage is not mistaken for a hang)."""
    rootfs = base_rootfs()
    build_log.parent.mkdir(parents=True, exist_ok=True)
    pending = [stage for stage in ROOTFS_STAGES if not (rootfs / stage[0]).exists()]
    started = stage_started = last_line = time.monotonic()
    progress(f"arm64 root tree: {pending[0][1]} ({pending[0][2]}; log: {build_log})")
    with build_log.open("ab") as out:
        proc = subprocess.Popen(["sh", str(ROOTFS_SCRIPT), str(rootfs)], stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    code: int | None = proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    code = None
                now = time.monotonic()
                while pending and (rootfs / pending[0][0]).exists():
                    progress(f"arm64 root tree: {pending[0][1]}: done in {now - stage_started:.0f}s")
                    pending.pop(0)
                    stage_started = last_line = now
                    if pending:
                        progress(f"arm64 root tree: {pending[0][1]} ({pending[0][2]})")
                if code is not None:
                    break
                if now - last_line >= 60:
                    progress(f"arm64 root tree: {pending[0][1] if pending else 'finishing'}: "
                             f"{(now - stage_started) / 60:.0f} min so far")
                    last_line = now
                if now - started > BUILD_TIMEOUT_S:
                    raise TestBedError(f"building the arm64 root tree took over {BUILD_TIMEOUT_S:.0f}s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0 or not base_built():
        raise TestBedError(f"building the arm64 root tree failed ({code}):\n{tail(build_log)}")


def _in_use(directory: Path) -> bool:
    """A running qemu still boots from an overlay of this image."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(directory).encode() in cmdline.read_bytes():
                return True
    return False


def _pip(*args: str) -> None:
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], timeout=900)


def _platform_args() -> list[str]:
    args = [f"--platform={p}" for p in WHEEL_PLATFORMS]
    return [*args, f"--python-version={GUEST_PYTHON}", "--implementation=cp", "--only-binary=:all:"]


def _download_wheels() -> Path:
    wheels = _wheels_dir()
    if (wheels / ".done").exists():
        return wheels
    shutil.rmtree(wheels, ignore_errors=True)
    _pip("download", "--quiet", "--dest", str(wheels), *_platform_args(), *runtime_pins())
    (wheels / ".done").touch()
    return wheels


def _build_image(image: Arm64Image, wheels: Path, *, bare: bool = False) -> None:
    shutil.rmtree(image.directory, ignore_errors=True)
    image.directory.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="androcond-arm64-", dir=CACHE_DIR) as tmp:
        work = Path(tmp)
        dist = work / "dist"
        source = work / "source"  # a copy: building in the checkout would leave build files there
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(CHECKOUT / name, source / name)
        shutil.copytree(CHECKOUT / "androcond", source / "androcond",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if not bare:
            _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(source))
        upper, overlay_work, merged = work / "upper", work / "work", work / "merged"
        for d in (upper, overlay_work, merged):
            d.mkdir()
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={base_rootfs()},upperdir={upper},workdir={overlay_work}", str(merged)])
        try:
            if bare:
                _lay_over_bare(merged, wheels)
            else:
                _lay_over(merged, wheels, dist)
            sparse = image.directory / "disk.img.tmp"
            with sparse.open("wb") as f:
                f.truncate(DISK_SIZE)
            run(["mkfs.ext4", "-q", "-F", "-L", "androcond-root", "-d", str(merged), str(sparse)], timeout=600)
            sparse.rename(image.disk)
            boot = merged / "boot"
            shutil.copyfile(_newest(boot, "vmlinuz-*"), image.kernel)
            shutil.copyfile(_newest(boot, "initrd.img-*"), image.initrd)
        finally:
            run(["umount", str(merged)], check=False)
    image.done.touch()


def _newest(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if not found:
        raise TestBedError(f"no {pattern} in {directory}")
    return found[-1]


def _lay_over(root: Path, wheels: Path, dist: Path) -> None:
    """androcond, its dependencies and the guest's units over the base tree (root: the overlay mount)."""
    site = root / GUEST_SITE
    site.mkdir(parents=True, exist_ok=True)
    _pip("install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", str(site),
         *_platform_args(), *map(str, sorted(wheels.glob("*.whl"))), *map(str, sorted(dist.glob("*.whl"))))
    (root / RUNC_WRAPPER.lstrip("/")).chmod(0o755)
    _guest_files(root, GUEST_FILES, ENABLED_UNITS)
    (root / "var/lib/androcond/spool").mkdir(parents=True, exist_ok=True)
    # Compile the bytecode now (in the guest's own Python, through binfmt) rather than at every boot under TCG.
    run(["chroot", str(root), "/usr/bin/python3", "-m", "compileall", "-q", "-j", "0", f"/{GUEST_SITE}"],
        check=False, timeout=1200)


def _lay_over_bare(root: Path, wheels: Path) -> None:
    """The bare variant: python3's cryptography and the device's units, nothing of androcond."""
    site = root / GUEST_SITE
    site.mkdir(parents=True, exist_ok=True)
    chosen = [str(w) for w in sorted(wheels.glob("*.whl")) if w.name.split("-")[0].lower() in BARE_WHEELS]
    _pip("install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", str(site),
         *_platform_args(), *chosen)
    _guest_files(root, BARE_GUEST_FILES, BARE_ENABLED_UNITS)
    run(["chroot", str(root), "/usr/bin/python3", "-m", "compileall", "-q", "-j", "0", f"/{GUEST_SITE}"],
        check=False, timeout=1200)


def _guest_files(root: Path, files: dict[str, tuple[str, int]], enabled: tuple[str, ...]) -> None:
    """The device's files and units over the tree; the tree's own ssh host keys dropped."""
    for rel, (text, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in enabled:
        link = wants / unit
        if not link.is_symlink():
            target = f"/etc/systemd/system/{unit}" if unit.startswith("androcond-") else f"/lib/systemd/system/{unit}"
            link.symlink_to(target)
    # Debian's adbd.service (USB gadget setup, then a second adbd) is masked: androcond-adbd.service runs the
    # one adbd, after the seed.
    for unit in MASKED_UNITS:
        (wants / unit).unlink(missing_ok=True)
        masked = root / "etc/systemd/system" / unit
        masked.unlink(missing_ok=True)
        masked.symlink_to("/dev/null")
    # Keys are per device (the seed disk), never baked in: drop the ones the packages generated.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()


# --- the device ----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ssh_banner(port: int, host: str = "127.0.0.1") -> str:
    """The ssh server's identification line, or "" (qemu's forward accepts even when nothing listens inside,
    then closes: only a banner tells that the guest's server is there)."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(3)
            data = s.recv(256)
    except OSError:
        return ""
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return line if line.startswith("SSH-2.0-") else ""


@dataclass
class Arm64Device:
    """One qemu-system-aarch64 guest booted from the cached image: ports, keys and the qemu process are its own.

    `up()` boots it and waits until sshd, adbd and the agent answer; `down()` stops exactly that qemu."""

    directory: Path
    image: Arm64Image | None = None
    ssh_port: int = 0
    adb_port: int = 0
    agent_port: int = 0
    pid: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    bare: bool = False  # booted from the bare variant: no agent until `androcond devices setup`

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.adb = AdbServer(self.directory)

    # --- files of this device ---
    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.directory / "qemu.log"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def agent_host_key_path(self) -> Path:
        return self.directory / "agent_host_key"

    @property
    def adb_serial(self) -> str:
        return f"127.0.0.1:{self.adb_port}"

    @property
    def agent_host_key(self) -> asyncssh.SSHKey:
        return asyncssh.read_private_key(self.agent_host_key_path)

    def agent_known_hosts_line(self, name: str) -> str:
        """known_hosts for the agent under `name` (the adb serial for a device reached through adb)."""
        return f"{name} {self.agent_host_key.export_public_key().decode().strip()}\n"

    def ssh_known_hosts_line(self) -> str:
        key = self.host_key.with_suffix(".pub").read_text().split()
        return f"[127.0.0.1]:{self.ssh_port} {key[0]} {key[1]}\n"

    def _make_keys(self) -> None:
        for key in (self.host_key, self.client_key):
            if not key.exists():
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"androcond-arm64 {key.name}",
                     "-f", str(key)])
        if not self.agent_host_key_path.exists():
            asyncssh.generate_private_key("ssh-ed25519").write_private_key(self.agent_host_key_path)
            self.agent_host_key_path.chmod(0o600)

    def _make_seed(self) -> Path:
        self._make_keys()
        seed_dir = self.directory / "seed"
        shutil.rmtree(seed_dir, ignore_errors=True)
        seed_dir.mkdir(mode=0o700)
        shutil.copyfile(self.host_key, seed_dir / "ssh_host_ed25519_key")
        shutil.copyfile(self.host_key.with_suffix(".pub"), seed_dir / "ssh_host_ed25519_key.pub")
        shutil.copyfile(self.client_key.with_suffix(".pub"), seed_dir / "authorized_keys")
        if not self.bare:
            shutil.copyfile(self.agent_host_key_path, seed_dir / "agent_host_key")
            (seed_dir / "agent.toml").write_text(GUEST_AGENT_CONFIG)
        seed = self.directory / "seed.img"
        seed.unlink(missing_ok=True)
        with seed.open("wb") as f:
            f.truncate(SEED_SIZE)
        run(["mkfs.ext4", "-q", "-F", "-L", "androcond-seed", "-d", str(seed_dir), str(seed)])
        return seed

    def qemu_command(self, overlay: Path, seed: Path) -> list[str]:
        assert self.image is not None
        forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in (
            (self.ssh_port, GUEST_SSH_PORT), (self.adb_port, GUEST_ADBD_PORT), (self.agent_port, GUEST_AGENT_PORT)))
        return [
            QEMU, "-M", "virt", "-accel", "tcg,thread=multi", "-cpu", "max,pauth=off", "-smp", "2", "-m", "4096",
            "-display", "none", "-monitor", "none", "-serial", f"file:{self.console_log}", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", "root=/dev/vda rw console=ttyAMA0 net.ifnames=0 panic=-1",
            "-drive", f"if=none,id=root,format=qcow2,file={overlay}",
            "-device", "virtio-blk-pci,drive=root",
            "-drive", f"if=none,id=seed,format=raw,readonly=on,file={seed}",
            "-device", "virtio-blk-pci,drive=seed",
            "-netdev", f"user,id=n,restrict=on,{forwards}",
            "-device", "virtio-net-pci,netdev=n",
        ]

    @classmethod
    def attached(cls, booted: str) -> Arm64Device:
        """A device booted by `python -m tests.testbed.arm64 boot`, from the JSON line it printed: not ours to
        stop (no pid)."""
        facts = json.loads(booted)
        return cls(Path(facts["directory"]), None, facts["ssh_port"], int(facts["adb_serial"].rpartition(":")[2]),
                   facts["agent_port"], None)

    def up(self, timeout: float = BOOT_TIMEOUT_S) -> Arm64Device:
        if self.pid is not None and alive(self.pid):
            return self
        self.image = self.image or (ensure_bare_image() if self.bare else ensure_image())
        overlay = self.directory / "root.qcow2"
        overlay.unlink(missing_ok=True)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image.disk), str(overlay)])
        self.ssh_port, self.adb_port, self.agent_port = free_port(), free_port(), free_port()
        return self._boot(overlay, timeout)

    def reboot(self, timeout: float = BOOT_TIMEOUT_S) -> Arm64Device:
        """Reboot the guest from its own disk (what it wrote stays): qemu runs with -no-reboot, so the guest's
        reboot ends it, and it boots again with the same disk, ports and keys."""
        pid = self.pid
        assert pid is not None
        run([ADB, "-s", self.adb_serial, "shell", "systemctl reboot"], check=False, timeout=60)
        wait_for(lambda: not alive(pid), timeout=180, interval=1.0, what="the arm64 guest going down",
                 diagnose=lambda: f"console:\n{tail(self.console_log, 40)}")
        self.pid = None
        self.adb.disconnect(self.adb_serial)
        return self._boot(self.directory / "root.qcow2", timeout)

    def _boot(self, overlay: Path, timeout: float) -> Arm64Device:
        seed = self._make_seed()
        self.console_log.unlink(missing_ok=True)
        self.adb.start()
        started = time.monotonic()
        self.pid = start_daemon(self.qemu_command(overlay, seed), self.qemu_log)
        (self.directory / "qemu.pid").write_text(f"{self.pid}\n")
        deadline = started + timeout
        try:
            self._wait("sshd", lambda: ssh_banner(self.ssh_port).startswith("SSH-2.0-OpenSSH"), deadline, started)
            self._wait("adbd", self._adb_online, deadline, started)
            if not self.bare:
                self._wait("agent", lambda: "AsyncSSH" in ssh_banner(self.agent_port), deadline, started)
        except BaseException:
            self.down()
            raise
        self.timings["boot_s"] = time.monotonic() - started
        return self

    def _wait(self, what: str, condition: Callable[[], bool], deadline: float, started: float) -> None:
        pid = self.pid
        assert pid is not None

        def ready() -> bool:
            if not alive(pid):
                raise TestBedError(f"qemu (pid {pid}) exited while waiting for {what}:\n{tail(self.qemu_log)}\n"
                                   f"console:\n{tail(self.console_log)}")
            return condition()

        wait_for(ready, timeout=max(deadline - time.monotonic(), 1), interval=1.0,
                 what=f"{what} in the arm64 guest", diagnose=lambda: f"console:\n{tail(self.console_log, 60)}")
        self.timings[f"{what}_s"] = time.monotonic() - started

    def _adb_online(self) -> bool:
        out = run([ADB, "-s", self.adb_serial, "get-state"], check=False, timeout=15).stdout.decode().strip()
        if out == "device":
            return True
        run([ADB, "connect", self.adb_serial], check=False, timeout=15)
        return False

    def down(self) -> None:
        if self.adb_port:
            self.adb.disconnect(self.adb_serial)
        if self.pid is not None:
            stop_pid(self.pid, timeout=30, what="qemu-system-aarch64")
            self.pid = None

    def adb_shell(self, command: str, timeout: float = 60) -> str:
        return run([ADB, "-s", self.adb_serial, "shell", command], timeout=timeout).stdout.decode()

    def adb_push(self, local: Path, remote: str, timeout: float = 300) -> None:
        run([ADB, "-s", self.adb_serial, "push", str(local), remote], timeout=timeout)


def main() -> None:
    """`python -m tests.testbed.arm64 build|boot DIR`: build the images (full and bare; `--bare`: that one only),
    or boot a device and wait for Enter."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.testbed.arm64")
    parser.add_argument("action", choices=("build", "boot"))
    parser.add_argument("directory", nargs="?", type=Path, default=Path("/run/androcond-testbed/arm64"))
    parser.add_argument("--log-dir", type=Path, help="where the build's logs go (default: the cache)")
    parser.add_argument("--bare", action="store_true", help="the bare variant (no agent: `androcond devices "
                                                            "setup` makes it a target)")
    args = parser.parse_args()
    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"[arm64 {time.monotonic() - started:4.0f}s] {line}", file=sys.stderr, flush=True)

    image = (ensure_bare_image if args.bare else ensure_image)(progress, args.log_dir)
    if args.action == "build" and not args.bare:
        ensure_bare_image(progress, args.log_dir)  # the tests boot both (tests/agent/test_arm64_bare.py)
    if args.action == "boot":
        device = Arm64Device(args.directory, image, bare=args.bare).up()
        print(json.dumps({"pid": device.pid, "ssh_port": device.ssh_port, "adb_serial": device.adb_serial,
                          "agent_port": device.agent_port, "directory": str(device.directory),
                          "timings": {k: round(v, 1) for k, v in device.timings.items()}}), flush=True)
        try:
            input("up; Enter stops it\n")
        finally:
            device.down()


if __name__ == "__main__":
    main()
