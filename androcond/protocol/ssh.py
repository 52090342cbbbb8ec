"""The ssh settings of the link, one definition for both ends (the daemon's client, androcond/link/ssh.py, and
the agent's server, androcond/agent/server.py)."""

from __future__ import annotations

from typing import Final

# AES-GCM runs in OpenSSL with AES-NI (or the ARMv8 crypto extensions); asyncssh's chacha20-poly1305 costs far
# more CPU per byte.
CIPHERS: Final = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                  "aes128-ctr", "aes256-ctr")
# A wide channel window keeps the link busy while acks travel back; big packets cut per-packet overhead.
CHANNEL_WINDOW: Final = 8 * 1024 * 1024
CHANNEL_PACKET: Final = 256 * 1024
# Keepalives: a peer that answers none of these for interval × count seconds is gone.
CLIENT_KEEPALIVE_S: Final = 15
CLIENT_KEEPALIVE_COUNT: Final = 4
SERVER_KEEPALIVE_S: Final = 30
