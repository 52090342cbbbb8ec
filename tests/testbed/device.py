"""The "device": a network namespace of our own with adbd on tcp:5555 and an OpenSSH server.

Its Docker engine (engine B) is a :class:`DockerEngine` with ``netns`` set; see bed.py.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from .proc import TestBedError, alive, run, start_daemon, stop_pid, tail, wait_for

ADB = "/usr/bin/adb"
ADBD = "/usr/sbin/adbd"
SSHD = "/usr/sbin/sshd"
ADBD_PORT = 5555
SSHD_PORT = 8022


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class DeviceNamespace:
    netns: str
    host_if: str
    device_if: str
    host_ip: str
    device_ip: str
    run_dir: Path

    def exists(self) -> bool:
        return Path(f"/var/run/netns/{self.netns}").exists()

    def create(self) -> bool:
        """Create the namespace and its veth link unless present. True if this call created it."""
        if self.exists():
            return False
        run(["ip", "netns", "add", self.netns])
        try:
            run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.device_if])
            run(["ip", "link", "set", self.device_if, "netns", self.netns])
            run(["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if])
            run(["ip", "link", "set", self.host_if, "up"])
            run(["ip", "-n", self.netns, "addr", "add", f"{self.device_ip}/30", "dev", self.device_if])
            run(["ip", "-n", self.netns, "link", "set", self.device_if, "up"])
            run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        except TestBedError:
            self.delete()
            raise
        return True

    def delete(self) -> None:
        run(["ip", "link", "del", self.host_if], check=False)
        if self.exists():
            run(["ip", "netns", "del", self.netns])

    def nsenter(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.netns}", *cmd]

    # --- adbd -------------------------------------------------------------------------------------------
    def start_adbd(self) -> int | None:
        if port_open(self.device_ip, ADBD_PORT):
            return None
        log = self.run_dir / "adbd.log"
        pid = start_daemon(self.nsenter(ADBD), log)
        wait_for(lambda: port_open(self.device_ip, ADBD_PORT), timeout=30, what="adbd on tcp:5555",
                 diagnose=lambda: tail(log) if alive(pid) else f"adbd exited:\n{tail(log)}")
        return pid

    # --- sshd -------------------------------------------------------------------------------------------
    @property
    def ssh_dir(self) -> Path:
        return self.run_dir / "ssh"

    @property
    def host_key(self) -> Path:
        return self.ssh_dir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    def make_ssh_keys(self) -> None:
        self.ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"androcond-testbed {key.name}",
                     "-f", str(key)])
        self.authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())
        self.authorized_keys.chmod(0o600)

    def known_hosts_line(self, host: str, port: int) -> str:
        key = self.host_key.with_suffix(".pub").read_text().split()
        return f"[{host}]:{port} {key[0]} {key[1]}\n"

    def start_sshd(self) -> int | None:
        if port_open(self.device_ip, SSHD_PORT):
            return None
        self.make_ssh_keys()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        config = self.ssh_dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {SSHD_PORT}",
            "ListenAddress 0.0.0.0",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"PidFile {self.ssh_dir / 'sshd.pid'}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "UsePAM no",
            "Subsystem sftp internal-sftp",
            "",
        ]))
        run([SSHD, "-t", "-f", str(config)])
        log = self.run_dir / "sshd.log"
        pid = start_daemon(self.nsenter(SSHD, "-D", "-e", "-f", str(config)), log)
        wait_for(lambda: port_open(self.device_ip, SSHD_PORT), timeout=30, what="sshd on tcp:8022",
                 diagnose=lambda: tail(log) if alive(pid) else f"sshd exited:\n{tail(log)}")
        return pid


class AdbServer:
    """The host's adb server (127.0.0.1:5037), which the bed connects to the device's adbd."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def answers(self) -> bool:
        return port_open("127.0.0.1", 5037)

    def start(self) -> bool:
        if self.answers():
            return False
        # `adb start-server` forks the server and returns once it listens.
        run([ADB, "start-server"], timeout=60)
        wait_for(self.answers, timeout=30, what="adb server on 127.0.0.1:5037")
        return True

    def stop(self) -> None:
        if self.answers():
            run([ADB, "kill-server"], check=False, timeout=30)

    def adb(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        return run([ADB, *args], check=check, timeout=timeout).stdout.decode()

    def connect(self, serial: str) -> None:
        def state_is_device() -> bool:
            out = run([ADB, "-s", serial, "get-state"], check=False, timeout=15).stdout.decode().strip()
            if out == "device":
                return True
            run([ADB, "connect", serial], check=False, timeout=15)
            return False

        wait_for(state_is_device, timeout=60, interval=0.5, what=f"adb device {serial} to be online",
                 diagnose=lambda: self.adb("devices", "-l", check=False))

    def disconnect(self, serial: str) -> None:
        if self.answers():
            run([ADB, "disconnect", serial], check=False, timeout=15)


def stop_recorded(pid: int | None, what: str) -> None:
    if pid is not None:
        stop_pid(pid, what=what)
