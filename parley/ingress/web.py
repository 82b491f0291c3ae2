"""The web side of the ingress, apart from the conversation: the page and its libraries, the
page's security policy, which origins and hosts count as its own, and a socket.io server that
refuses what Parley's protocol never sends.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
from pathlib import Path
from typing import Any

import socketio

from parley.protocol import Notice

log = logging.getLogger("parley.web")

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "static"
VENDOR = {
    "socket.io.min.js": ROOT / "node_modules/socket.io-client/dist/socket.io.min.js",
    "markdown-it.js": ROOT / "node_modules/markdown-it/dist/browser/markdown-it.esm.min.mjs",
    "purify.js": ROOT / "node_modules/dompurify/dist/purify.es.mjs",
}
"""Browser libraries from npm, served from node_modules as they are (ES modules, except socket.io)."""
PAGE_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "frame-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
"""The page's Content-Security-Policy (see `page_policy`): only its own scripts run, and nothing is fetched from
elsewhere (a model's answer that slipped past the sanitizer still could not run script or load
a remote image). Inline styles are allowed for the HTML preview, which has no script."""


def page_policy(host: str) -> str:
    """The policy for a page served as `host`: Safari before 15.4 does not count ws: as 'self',
    so the socket's own origin is named too (only for a host that is a plain name or address)."""
    if not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", host):
        return PAGE_POLICY
    return PAGE_POLICY.replace("connect-src 'self'", f"connect-src 'self' ws://{host} wss://{host}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def same_origin(origin: str | None, environ: dict[str, Any], scheme: str) -> bool:
    """True when a socket.io handshake's Origin is the page this server served, by whatever name.

    The browser's Origin must name the host (and port) it sent in `Host` with the scheme this
    server really speaks. engine.io's own check assumes `http` unless X-Forwarded-Proto says
    otherwise, so it refuses every page served over our own TLS. A TLS-terminating proxy in front
    may name the scheme and host it was reached by in X-Forwarded-Proto / X-Forwarded-Host (a page
    cannot set those on its own requests, so honouring them lets no other site in).
    """
    if not origin:
        return True  # not a browser page (a script, a test client): there is no cross-site request to refuse
    host = environ.get("HTTP_HOST", "")
    allowed = {f"{scheme}://{host}"}
    forwarded_proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip()
    forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
    if forwarded_proto or forwarded_host:
        allowed.add(f"{forwarded_proto or scheme}://{forwarded_host or host}")
    return origin.lower() in {a.lower() for a in allowed}


class SocketServer(socketio.AsyncServer):
    """python-socketio's server, refusing what Parley's protocol never sends, politely.

    Binary events are refused at their first frame: their attachments would otherwise be buffered
    until complete, however many arrive. A message over `limit` bytes gets a notice, then the socket
    is closed (engine.io itself would close it silently: its own limit is set higher to let this
    check speak first).
    """

    def __init__(self, *, limit: int, **kwargs: Any) -> None:
        super().__init__(max_http_buffer_size=limit * 4, **kwargs)
        self.limit = limit

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        binary = isinstance(data, bytes) or (isinstance(data, str) and data[:1] in ("5", "6"))
        if binary or len(data) > self.limit:
            sid = self.manager.sid_from_eio_sid(eio_sid, "/")
            reason = (
                "Parley takes no binary messages; this connection is closed."
                if binary
                else f"That message was larger than {self.limit // 1024} KB; this connection is closed. Reload the page."
            )
            log.warning("closing %s: %s", sid or eio_sid, reason)
            if sid:
                await self.emit(Notice.event, Notice(level="error", text=reason).payload(), to=sid)
                await self.disconnect(sid)
            return
        await super()._handle_eio_message(eio_sid, data)
