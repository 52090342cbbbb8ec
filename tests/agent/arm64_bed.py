"""The arm64 device in the agent tests: one qemu-system-aarch64 guest per test session (booting under TCG takes
30-60 s), shared by every test that needs it. The two-ISA image and the device's config table are the test
bed's (tests/testbed/twoisa.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..testbed.arm64 import Arm64Device, base_built, ensure_image
from ..tiers import unavailable

BUILD_ALLOWED = bool(os.environ.get("ANDROCOND_ARM64"))

# Marks for a module of arm64 tests (the fixture below says what is missing when the image is not built).
ARM64_MARKS = [
    pytest.mark.testbed,
    # Everything in the guest is emulated; a first build takes up to 30 min more.
    pytest.mark.timeout(600 if base_built() else 3600),
]


# While working on the tests: attach to a device booted by `python -m tests.testbed.arm64 boot` (the JSON line it
# prints) instead of booting one; it is left running. Its agent is the one its image was built with.
ATTACH = os.environ.get("ANDROCOND_ARM64_ATTACH", "")


@pytest.fixture(scope="session")
def arm64_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64Device]:
    if ATTACH:
        yield Arm64Device.attached(ATTACH)
        return
    if not base_built() and not BUILD_ALLOWED:
        unavailable("the arm64 image is not built (about 15 min once: scripts/setup.sh builds it, or set "
                    "ANDROCOND_ARM64=1 to build it here)")
    device = Arm64Device(tmp_path_factory.mktemp("arm64"), ensure_image())
    device.up()
    try:
        yield device
    finally:
        device.down()

