"""One migration, end to end (the design card's name for it): its phases, roles and settling live in
androcond/migration/ (see docs/architecture.md)."""

from .migration import Context, Migration, Rejected, new_record, resolve

__all__ = ["Context", "Migration", "Rejected", "new_record", "resolve"]
