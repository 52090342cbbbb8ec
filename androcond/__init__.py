"""androcond: move a running Docker container from a Linux host to an Android device, exactly once."""

__version__ = "0.1.0"
