"""A free loopback port, for servers we start ourselves (Thespian's admin, nats-server)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A free loopback TCP port (the OS picks; free when this returns, so bind it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
