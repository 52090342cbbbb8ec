"""The device's check that it could publish a container's host port (agent/fit.port_free), on this machine's
loopback: taken while something listens there, free once only closing connections of an earlier server are
left (TIME_WAIT), as the engine's own listener would find it."""

from __future__ import annotations

import socket

from androcond.agent.fit import port_free


def test_a_listening_port_is_taken_and_closing_connections_leave_it_free() -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not port_free("127.0.0.1", port, "tcp")
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: its end waits in TIME_WAIT on `port`
    client.recv(1)
    client.close()
    server.close()
    assert port_free("127.0.0.1", port, "tcp")
