"""The command line: the daemon's verbs and the client verbs that use its API."""
