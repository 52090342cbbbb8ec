"""A bare asyncssh server that reads every byte of a session's stdin and throws it away, then says how many it
read: what asyncssh alone moves between two processes, with androcond's ciphers, window and packet size but none
of its protocol, digests or disk. bench/transport.py runs it in the device's namespace as a ceiling.

Run:  python -m bench.ssh_sink PORT HOST_KEY AUTHORIZED_KEYS   (prints "ready" once listening)
"""

from __future__ import annotations

import asyncio
import sys

import asyncssh

from androcond.protocol import ssh


async def _sink(process: asyncssh.SSHServerProcess[bytes]) -> None:
    total = 0
    while data := await process.stdin.read(1 << 20):
        total += len(data)
    process.stdout.write(str(total).encode())
    process.exit(0)


async def main(port: int, host_key: str, authorized: str) -> None:
    server = await asyncssh.listen(None, port, server_host_keys=[host_key], authorized_client_keys=authorized,
                                   process_factory=_sink, encoding=None, encryption_algs=ssh.CIPHERS,
                                   window=ssh.CHANNEL_WINDOW, max_pktsize=ssh.CHANNEL_PACKET)
    print("ready", flush=True)
    async with server:
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
