"""The source role: where a container runs before it moves (androcond/migration/roles.py)."""
