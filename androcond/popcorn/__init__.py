"""The Popcorn side of a move across ISAs, as a source runs it before its dump: find a task's
`__migrate_gb_variable` (`symbols`) and run the notify protocol on it (`notify`). Shared by the host and the
device's agent, so it needs nothing beyond the standard library."""
