"""The ingress's own web server: the page, its libraries and health, socket.io, and the clocks that
keep sessions moving (the conversation protocol itself is `parley.ingress.signalling`).

Invariants:
- It serves HTTP itself (not through Serve's proxy), because WebRTC needs the node's own UDP.
- A non-loopback host is served over HTTPS: browsers refuse the camera on plain HTTP elsewhere.
- A host name it does not go by is refused (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from media.track import LATENESS_BOUNDS_MS
from parley.config import ParleyConfig
from parley.engine.messages import StoreQueue
from parley.engine.metrics import Meter
from parley.engine.services import Services
from parley.engine.session import Session
from parley.engine.turnmodel import TurnJudge, load_turn_judge
from parley.ingress.auth import allowed_hosts, host_allowed, host_of
from parley.ingress.ice import configure_ice, parse_port_range
from parley.ingress.rtc import Peer
from parley.ingress.signalling import Signalling
from parley.ingress.store import open_store
from parley.ingress.tls import self_signed_pair
from parley.ingress.web import STATIC, VENDOR, SocketServer, is_loopback, page_policy, same_origin

log = logging.getLogger("parley.server")

HOUSEKEEPING_S = 5.0
TICK_S = 0.025


class IngressServer:
    """aiohttp + python-socketio + aiortc for the browsers that reach this node."""

    def __init__(self, config: ParleyConfig, services: Services, *, meter: Meter | None = None) -> None:
        self.config = config
        self.services = services
        self.meter = meter or Meter()
        self.store: StoreQueue | None = open_store(
            config.server.store, config.server.state_dir, config.server.keep_conversations_s
        )
        """Conversations on the node's disk: they outlive this process and are shared with the
        node's other ingress processes (None: kept in memory only)."""
        self.process = uuid.uuid4().hex[:8]
        """This ingress process, as the welcome names it (several may share a port)."""
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._forgot = time.monotonic()
        self.housekeeping_failures = 0
        """Rounds of housekeeping that failed (logged; the next round goes on)."""
        self.url = ""
        self.scheme = "http" if is_loopback(config.server.host) else "https"
        """What browsers speak to this server; it decides which Origin a socket.io handshake may carry."""
        self.sio = SocketServer(
            async_mode="aiohttp",
            cors_allowed_origins=lambda origin, environ: same_origin(origin, environ, self.scheme),
            limit=config.limits.max_payload_bytes,
            ping_interval=10,  # a socket whose page is gone closes within 20 s (engine.io's default: 45)
            ping_timeout=10,
            logger=False,
            engineio_logger=False,
        )
        self.signalling = Signalling(config, services, self.sio, meter=self.meter, store=self.store, process=self.process)
        """The conversation protocol: the sockets, their sessions and peers."""
        self.allowed_hosts = allowed_hosts(config)
        self.app = web.Application(client_max_size=4 * config.limits.max_payload_bytes, middlewares=[self._check_host])
        self.sio.attach(self.app)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/index.html", self._index)  # the same page, with the same headers
        self.app.router.add_get("/healthz", self._health)
        self.app.router.add_get("/vendor/{name}", self._vendor)
        self.app.router.add_static("/", STATIC)

    @property
    def sessions(self) -> dict[str, Session]:
        return self.signalling.sessions

    @property
    def peers(self) -> dict[str, Peer]:
        return self.signalling.peers

    @property
    def turn_judge(self) -> TurnJudge | None:
        """Hands-free's end-of-turn judge, shared by this process's sessions (loaded by `start`)."""
        return self.signalling.turn_judge

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> str:
        """Bind the web server; returns the URL a browser opens."""
        cfg, media = self.config.server, self.config.webrtc
        configure_ice(media.ice_addresses, parse_port_range(media.udp_ports) if media.udp_ports else None)
        ssl_context = None
        if self.scheme == "https":
            cert, key = (cfg.cert_file, cfg.key_file)
            if not (cert and key):
                cert, key = self_signed_pair(Path(cfg.self_signed_dir).expanduser(), cfg.host)
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(cert, key)
        await self.signalling.learn_sight()
        if self.config.turn.end_of_turn.judge == "model":
            judge, missing = await asyncio.to_thread(load_turn_judge, self.config.turn)
            self.signalling.turn_judge, self.signalling.turn_models_missing = judge, missing
        # aiohttp keeps a connection that sends nothing for an hour by default: half-open connections
        # would pile up. (A TLS handshake that never finishes is closed by asyncio after 60 s.)
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=self.config.limits.idle_connection_s)
        await self._runner.setup()
        shared = self.config.serve.ingress.per_node > 1  # the node's other ingress processes bind it too
        await web.TCPSite(self._runner, cfg.host, cfg.port, ssl_context=ssl_context, reuse_port=shared or None).start()
        shown = "localhost" if cfg.host in ("0.0.0.0", "::") else cfg.host
        self.url = f"{self.scheme}://{shown}:{cfg.port}/"
        self._reaper = asyncio.get_running_loop().create_task(self._reap())
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        log.info("Parley is serving %s", self.url)
        return self.url

    async def stop(self) -> None:
        for task in (self._reaper, self._ticker):
            if task:
                task.cancel()
        await self.signalling.close()
        if self.store is not None:
            await self.store.close()  # what is queued is written first (at most 5 s)
        # Say goodbye to every socket first: otherwise cleanup waits (up to a minute) for each open
        # WebSocket to end by itself, and the pages go on believing they are connected.
        await self.sio.shutdown()
        if self._runner:
            await self._runner.cleanup()

    async def _tick(self) -> None:
        """Every `TICK_S`: sessions in the middle of an utterance check their audio has not stopped."""
        while True:
            await asyncio.sleep(TICK_S)
            for session in self.sessions.values():
                try:
                    session.tick()
                except Exception:
                    log.exception("session %s: tick failed", session.id[:8])

    async def _reap(self) -> None:
        """Every few seconds, the housekeeping (`housekeep`). A failure is logged and the next round
        goes on: one store error must not end the reaping for good."""
        while True:
            await asyncio.sleep(min(HOUSEKEEPING_S, self.config.server.session_idle_s))
            try:
                await self.housekeep()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.housekeeping_failures += 1
                log.exception("housekeeping failed (%d times so far); it goes on", self.housekeeping_failures)

    async def housekeep(self) -> None:
        """Report late audio packets and what the microphones' packets went through, close the sockets
        whose invitation was withdrawn or ran out, forget sessions whose browser has been gone longer
        than session_idle_s, and stored conversations untouched for keep_conversations_s. Each step
        is tried even when another fails."""
        failed: list[BaseException] = []
        for peer in list(self.peers.values()):
            try:
                peer.report(self.meter)
            except Exception as exc:
                failed.append(exc)
        for step in (self.signalling.drop_withdrawn, self.signalling.tell_media_problems):
            try:
                await step()
            except Exception as exc:
                failed.append(exc)
        now = time.monotonic()
        for session in self.signalling.detached():
            if now - session.last_seen > self.config.server.session_idle_s:
                try:
                    await self.signalling.expire(session)
                    log.info("session %s expired", session.id[:8])
                except Exception as exc:
                    failed.append(exc)
        for session in list(self.sessions.values()):
            try:
                await session.resync()  # stores what an unsaved one holds; tells the user when the store fails or recovers
            except Exception as exc:
                failed.append(exc)
        if self.store is not None and now - self._forgot > 600:
            self._forgot = now
            try:
                await self.store.forget_older_than(self.config.server.keep_conversations_s)
            except Exception as exc:
                failed.append(exc)
        if failed:
            raise failed[0]

    # -- HTTP -------------------------------------------------------------------------------

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Refuse a name this server does not go by: a DNS-rebinding page reaches it by the attacker's."""
        host = host_of(request.headers.get("Host", ""))
        if not host_allowed(host, self.allowed_hosts):
            log.warning("refused a request for host %r from %s", host, request.remote)
            text = f"This Parley does not answer to the name {host!r}. Its operator can add it: --server-allowed-hosts."
            return web.Response(status=421, text=text)
        response: web.StreamResponse = await handler(request)
        if not response.prepared:  # the page's scripts and styles too: never sniffed, never a referrer
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        headers = {
            "Content-Security-Policy": page_policy(request.host or ""),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        return web.FileResponse(STATIC / "index.html", headers=headers)

    async def _health(self, request: web.Request) -> web.Response:
        live = (p.track.lateness for p in self.peers.values())
        lateness = [sum(counts) for counts in zip(self.signalling.closed_lateness, *live, strict=True)]
        return web.json_response(
            {
                "sessions": self.signalling.attached,
                "detached_sessions": len(self.signalling.detached()),
                "max_sessions": self.config.server.max_sessions,
                "ingress": self.process,
                "pacing": {"late_ms_bounds": list(LATENESS_BOUNDS_MS), "packets": lateness},
            }
        )

    async def _vendor(self, request: web.Request) -> web.StreamResponse:
        path = VENDOR.get(request.match_info["name"])
        if path is None or not path.exists():
            raise web.HTTPNotFound(text="not installed: run scripts/install.sh")
        return web.FileResponse(path, headers={"Content-Type": "text/javascript; charset=utf-8"})
