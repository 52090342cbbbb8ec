"""The device agent: receives a migration's files over one ssh channel and restores the container.

Kept to few dependencies (asyncssh, protobuf, aiohttp for the Docker engine's API, structlog: `[project]
dependencies`, without the `daemon` extra) so that it runs from Termux on a phone; it imports nothing of the
host's but the modules both sides share (tests/fast/test_agent_footprint.py).
"""
