"""A migration as phases written against two roles (a source, a target), which hand each other frozen values
(plan.py) and settle through one Settler, in flight and after a restart. See docs/architecture.md."""

from .context import Context, new_record, phase_timeouts
from .errors import DeviceDidNotRestore, PhaseBudgetSpent, Rejected
from .run import Migration, resolve

__all__ = ["Context", "DeviceDidNotRestore", "Migration", "PhaseBudgetSpent", "Rejected", "new_record",
           "phase_timeouts", "resolve"]
