"""Where this node's WebRTC media can be reached: ICE host addresses, UDP ports, public address.

Invariant: these are process-wide settings of each ingress process (a node runs
`serve.ingress.per_node` of them, all with the same settings). aioice offers no
options for them, so `configure_ice` replaces the two module-level names its candidate gathering
looks up (`get_host_addresses` and `asyncio`), and `advertise_public` rewrites the host
candidates in an SDP answer for a node behind 1:1 NAT.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import hmac
import logging
import random
import re
import time
import types
from collections.abc import Sequence
from typing import Any

import aioice.ice

from parley.config import IceServer

log = logging.getLogger("parley.ice")

_default_host_addresses = aioice.ice.get_host_addresses
_HOST_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ udp \d+ )(\S+)( \d+ typ host)", re.M | re.I)


def parse_port_range(text: str) -> range:
    """'50000-50999' -> range(50000, 51000); ValueError if it is not a usable range."""
    low, _, high = text.partition("-")
    ports = range(int(low), int(high) + 1)
    if not ports or ports.start < 1024 or ports.stop > 65536:
        raise ValueError(f"UDP port range must be LOW-HIGH within 1024-65535, got {text!r}")
    return ports


def configure_ice(addresses: Sequence[str], udp_ports: range | None) -> None:
    """Offer exactly `addresses` as host candidates (empty: aioice's own choice, which never
    includes loopback) and bind their sockets inside `udp_ports` (None: any free port)."""
    chosen = list(addresses)
    if chosen:

        def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        aioice.ice.get_host_addresses = host_addresses
        log.info("ICE host candidates: %s", ", ".join(chosen))
    else:
        aioice.ice.get_host_addresses = _default_host_addresses
    aioice.ice.asyncio = _AsyncioWithPorts(udp_ports) if udp_ports else asyncio  # type: ignore[attr-defined]
    if udp_ports:
        log.info("ICE UDP ports: %d-%d", udp_ports.start, udp_ports.stop - 1)


def advertise_public(sdp: str, public_address: str) -> str:
    """The SDP with every host candidate's address replaced by `public_address` (1:1 NAT: the
    browser must send to the public address; the NAT forwards to the same port here)."""
    return _HOST_CANDIDATE.sub(lambda m: f"{m.group(1)}{public_address}{m.group(3)}", sdp)


class _AsyncioWithPorts(types.ModuleType):
    """The asyncio module as aioice sees it, except that its running loop binds UDP sockets that
    ask for port 0 to a free port of the range."""

    def __init__(self, ports: range) -> None:
        super().__init__("asyncio")
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def get_running_loop(self) -> Any:
        return _LoopWithPorts(asyncio.get_running_loop(), self._ports)


class _LoopWithPorts:
    def __init__(self, loop: asyncio.AbstractEventLoop, ports: range) -> None:
        self._loop = loop
        self._ports = ports

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, protocol_factory: Any, local_addr: Any = None, **kwargs: Any) -> Any:
        if local_addr is None or local_addr[1] != 0:
            return await self._loop.create_datagram_endpoint(protocol_factory, local_addr=local_addr, **kwargs)
        first = random.randrange(len(self._ports))  # spread sessions over the range
        for i in range(len(self._ports)):
            port = self._ports[(first + i) % len(self._ports)]
            try:
                return await self._loop.create_datagram_endpoint(protocol_factory, local_addr=(local_addr[0], port), **kwargs)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"every UDP port in {self._ports.start}-{self._ports.stop - 1} is taken")


def relay_credentials(servers: Sequence[IceServer], secret: str | None, user: str, ttl_s: float) -> list[IceServer]:
    """`servers` with short-lived credentials for `user` on every TURN server that names none.

    The TURN REST API scheme (coturn's use-auth-secret): the username is "<expiry>:<user>" and the
    credential base64(HMAC-SHA1(secret, username)); the TURN server checks both without asking us,
    and they stop working at the expiry. Without a secret the servers are returned unchanged.
    """
    if not secret:
        return list(servers)
    username = f"{int(time.time() + ttl_s)}:{user}"
    credential = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    out = []
    for server in servers:
        relay = any(url.startswith(("turn:", "turns:")) for url in server.urls)
        if relay and not server.username:
            server = server.model_copy(update={"username": username, "credential": credential})
        out.append(server)
    return out
