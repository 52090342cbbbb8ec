"""The device agent: receives a migration's files over one ssh channel and restores the container.

Kept to few dependencies (asyncssh, protobuf, aiohttp for the Docker engine's API) so that it runs from Termux
on a phone.
"""
