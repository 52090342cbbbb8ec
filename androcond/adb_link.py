"""The design card's name for the adb client, which lives with the link (androcond/link/adb.py)."""

from .link.adb import AdbClient, AdbDevice, AdbError, AdbFailure, AdbServerUnavailable, ShellResult

__all__ = ["AdbClient", "AdbDevice", "AdbError", "AdbFailure", "AdbServerUnavailable", "ShellResult"]
