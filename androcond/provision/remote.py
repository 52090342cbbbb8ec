"""Running shell scripts and small Python programs on a device over adb, as root (through its `su` when adbd
does not run as root). Scripts travel base64-encoded, so no quoting of the device's shell is involved."""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

from ..errors import AndrocondError
from ..link.adb import AdbClient


class RemoteError(AndrocondError):
    """A step on the device failed; says which and what the device answered."""


@dataclass
class Device:
    adb: AdbClient
    serial: str
    via_su: bool = False

    async def become_root(self) -> None:
        """Decide how to be root there; raises RemoteError when neither adbd nor su gives root."""
        if (await self.adb.shell(self.serial, "id -u")).text.strip() == "0":
            return
        if (await self.adb.shell(self.serial, "su 0 id -u 2>/dev/null")).text.strip() == "0":
            self.via_su = True
            return
        raise RemoteError(f"no root on {self.serial}: run adbd as root (`adb root`) or install a root manager's su")

    async def sh(self, script: str, what: str) -> str:
        """Run `script` with sh as root; its output. A non-zero exit raises RemoteError naming `what`."""
        # adbd's shell runs with umask 0: what a step creates would be writable by every app.
        encoded = base64.b64encode(("umask 022\n" + script).encode()).decode()
        runner = "su 0 sh" if self.via_su else "sh"
        result = await self.adb.shell(self.serial, f"echo {encoded} | base64 -d | {runner}; echo \"@@rc=$?\"")
        text = result.text
        body, _, rc = text.rpartition("@@rc=")
        if rc.strip() != "0":
            raise RemoteError(f"{what} failed on {self.serial} (exit {rc.strip() or '?'}): {body.strip()[-500:]}")
        return body

    async def python(self, program: str, *args: str, what: str) -> str:
        """Run a Python program with the device's python3 (root); its output."""
        # Handed over with -c, not as a file: a phone has no /tmp, and nothing is left behind.
        encoded = base64.b64encode(program.encode()).decode()
        return await self.sh(f'python3 -c "$(echo {encoded} | base64 -d)" {shlex.join(args)}', what)
