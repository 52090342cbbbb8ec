"""The create body the daemon sends in ``Target.create_config_json``: a Docker `containers/create` body, plus
one private section of androcond's own that the agent reads and removes before it calls its engine.

The daemon writes the section (container_config.py), the agent reads it (agent/fit.py): it lives here so that
neither imports the other.
"""

from __future__ import annotations

# The private section's key. Its fields: "restart_policy" (the source's RestartPolicy, applied by the agent
# once the restore succeeded) and "networks" (the user-defined networks, name and driver, that the agent
# creates on the device when it lacks them).
PRIVATE_KEY = "Androcond"
