"""Resume an x86_64 CRIU dump under qemu-x86_64 with a restorer of our own (docs/emulation.md).

Host side: make_plan() turns a dump directory into the restorer's plan (refusing what cannot be restored),
build.restorer_path() gives the built restorer, entrypoint() the new container's argv.
"""

from .plan import (
    MOUNT,
    PLAN_NAME,
    RESTORER_NAME,
    STATUS_NAME,
    EmulationRefused,
    PlanSummary,
    entrypoint,
    make_plan,
)

__all__ = [
    "MOUNT",
    "PLAN_NAME",
    "RESTORER_NAME",
    "STATUS_NAME",
    "EmulationRefused",
    "PlanSummary",
    "entrypoint",
    "make_plan",
]
