"""The target role: where a container goes (androcond/migration/roles.py)."""
