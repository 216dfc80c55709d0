"""Network helpers that need no Ray (the GPU benchmark host has none)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on every interface of this machine just now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
