"""Small helpers shared across trainables."""

from __future__ import annotations

import socket


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens (a cheap "are we online" check before a download)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
