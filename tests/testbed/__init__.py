"""The androcond test bed: real Docker engines, CRIU 4, a device network namespace with adbd and sshd.

Brought up once per test session (see tests/conftest.py) or by hand with ``scripts/testbed up|down|status``.
Everything it starts it records in its state directory, and ``down`` stops exactly that, by pid.
"""

from .bed import TestBed

__all__ = ["TestBed"]
