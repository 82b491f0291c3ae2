"""Ports and the network the tests run in."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` just now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def loopback_only() -> bool:
    """True inside a network namespace whose only interface is lo (scripts/test.sh makes one)."""
    return {name for _, name in socket.if_nameindex()} == {"lo"}
