"""The ingress's own web server: the page, socket.io signalling, and one Session per browser.

Invariants:
- It serves HTTP itself (not through Serve's proxy), because WebRTC needs the node's own UDP.
- A non-loopback host is served over HTTPS: browsers refuse the camera on plain HTTP elsewhere.
- Every socket.io payload is checked before use; a bad one gets a notice, never an exception
  that could drop the connection or the server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web

from media.track import LATENESS_BOUNDS_MS
from parley.config import IceServer, ParleyConfig, model_label, model_quality
from parley.engine.metrics import Meter
from parley.engine.services import Services
from parley.engine.session import Session, SessionSettings
from parley.engine.turnmodel import TurnJudge, load_turn_judge
from parley.ingress.auth import Gate, Refused, User, allowed_hosts, host_allowed, host_of
from parley.ingress.ice import configure_ice, parse_port_range, turn_credentials
from parley.ingress.rtc import Peer, SdpError
from parley.ingress.store import ConversationStore, open_store
from parley.ingress.tls import self_signed_pair
from parley.ingress.web import STATIC, VENDOR, SocketServer, is_loopback, page_policy, same_origin

log = logging.getLogger("parley.server")

HOUSEKEEPING_S = 5.0
TICK_S = 0.025
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class IngressServer:
    """aiohttp + python-socketio + aiortc for the browsers that reach this node."""

    def __init__(self, config: ParleyConfig, services: Services, *, meter: Meter | None = None) -> None:
        self.config = config
        self.services = services
        self.meter = meter or Meter()
        self.sessions: dict[str, Session] = {}
        self.store: ConversationStore | None = open_store(
            config.server.store, config.server.state_dir, config.server.keep_conversations_s
        )
        """Conversations on the node's disk: they outlive this process and are shared with the
        node's other ingress processes (None: kept in memory only)."""
        self.process = uuid.uuid4().hex[:8]
        """This ingress process, as the welcome names it (several may share a port)."""
        self.peers: dict[str, Peer] = {}
        self._sid_session: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._forgot = time.monotonic()
        self._lateness = [0] * (len(LATENESS_BOUNDS_MS) + 1)
        """Pacing of the peers already closed (live ones are read from their tracks)."""
        self.turn_judge: TurnJudge | None = None
        """Hands-free's end-of-turn judge, shared by this process's sessions (loaded by `start`)."""
        self.turn_models_missing: dict[str, str] = {}
        """The turn models that could not load, and why (the page says so)."""
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
        self.gate = Gate(config)
        """Who is connecting: an invitation, a trusted proxy's header, or anyone (loopback)."""
        self.allowed_hosts = allowed_hosts(config)
        self._users: dict[str, User] = {}
        self._turn_times: dict[str, deque[float]] = {}
        """When each account's recent turns started (limits.turns_per_minute is per user)."""
        self.app = web.Application(client_max_size=4 * config.limits.max_payload_bytes, middlewares=[self._check_host])
        self.sio.attach(self.app)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/healthz", self._health)
        self.app.router.add_get("/vendor/{name}", self._vendor)
        self.app.router.add_static("/", STATIC)
        for event in ("hello", "offer", "talk_start", "talk_end", "text", "stop", "vision", "hands_free", "new_conversation"):
            self.sio.on(event, self._guard(event, getattr(self, f"_on_{event}")))
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> str:
        """Bind the web server; returns the URL a browser opens."""
        cfg = self.config.server
        configure_ice(cfg.ice_addresses, parse_port_range(cfg.udp_ports) if cfg.udp_ports else None)
        ssl_context = None
        if self.scheme == "https":
            cert, key = (cfg.cert_file, cfg.key_file)
            if not (cert and key):
                cert, key = self_signed_pair(Path(cfg.self_signed_dir).expanduser(), cfg.host)
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(cert, key)
        if self.config.turn.end_of_turn == "model":
            self.turn_judge, self.turn_models_missing = await asyncio.to_thread(load_turn_judge, self.config.turn)
        # aiohttp keeps a connection that sends nothing for an hour by default: half-open connections
        # would pile up. (A TLS handshake that never finishes is closed by asyncio after 60 s.)
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=self.config.limits.idle_connection_s)
        await self._runner.setup()
        shared = self.config.serve.ingress_per_node > 1  # the node's other ingress processes bind it too
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
        for sid in list(self.peers):
            await self._close_peer(sid)
        for session in self.sessions.values():
            await session.close()
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
                if session.recorder.utterance is not None:
                    try:
                        session.tick()
                    except Exception:
                        log.exception("session %s: tick failed", session.id[:8])

    async def _reap(self) -> None:
        """Every few seconds: report late audio packets, and forget sessions whose browser has
        been gone longer than session_idle_s."""
        while True:
            await asyncio.sleep(min(HOUSEKEEPING_S, self.config.server.session_idle_s))
            for peer in self.peers.values():
                late, peer.late_reported = peer.track.late_packets - peer.late_reported, peer.track.late_packets
                if late:
                    self.meter.late_packets(late)
            live = set(self._sid_session.values())
            now = time.monotonic()
            if self.store is not None and now - self._forgot > 600:
                self._forgot = now
                await asyncio.to_thread(self.store.forget_older_than, self.config.server.keep_conversations_s)
            for sid, session in list(self.sessions.items()):
                if sid not in live and now - session.last_seen > self.config.server.session_idle_s:
                    del self.sessions[sid]
                    await session.close()
                    log.info("session %s expired", sid[:8])
            held = {session.user for session in self.sessions.values()}
            for account in [a for a in self._turn_times if a not in held]:
                del self._turn_times[account]

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
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        headers = {
            "Content-Security-Policy": page_policy(request.host or ""),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        return web.FileResponse(STATIC / "index.html", headers=headers)

    async def _health(self, request: web.Request) -> web.Response:
        lateness = [sum(counts) for counts in zip(self._lateness, *(p.track.lateness for p in self.peers.values()), strict=True)]
        return web.json_response(
            {
                "sessions": len(self._sid_session),
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

    # -- socket.io --------------------------------------------------------------------------

    def _guard(self, event: str, handler: Any) -> Any:
        """A handler whose failures become notices; what it returns is the event's acknowledgement
        (socket.io sends it back when the page asked for one)."""

        async def guarded(sid: str, *args: Any) -> Any:
            if len(args) > 1:  # every event of the protocol carries one payload (or none)
                await self._notice(sid, f"'{event}' takes one payload; {len(args)} were sent.", "error")
                return {"ok": False}
            data = args[0] if args else None
            try:
                return await handler(sid, data if isinstance(data, dict) else {} if data is None else data)
            except Exception:
                log.exception("handling %s from %s failed", event, sid)
                await self._notice(sid, f"The server could not handle '{event}'. Please try again.", "error")
                return {"ok": False}

        return guarded

    async def _notice(self, sid: str, text: str, level: str = "error") -> None:
        await self.sio.emit("notice", {"level": level, "text": text}, to=sid)

    def _session(self, sid: str) -> Session | None:
        session_id = self._sid_session.get(sid)
        return self.sessions.get(session_id) if session_id else None

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        """Who is this? Refused here, a browser learns why (socket.io's connect_error) and gets nowhere."""
        try:
            user = self.gate.user(environ, auth)
        except Refused as exc:
            log.info("refused a connection: %s", exc)
            raise socketio.exceptions.ConnectionRefusedError(str(exc)) from None
        same_address = sum(1 for u in self._users.values() if u.address == user.address)
        if same_address >= self.config.limits.sockets_per_address:
            log.warning("refused %s: %d connections from that address already", user.address, same_address)
            raise socketio.exceptions.ConnectionRefusedError(
                "Too many connections from your network address. Close some Parley tabs and try again."
            )
        self._users[sid] = user

    async def _on_hello(self, sid: str, data: Any) -> None:
        if not isinstance(data, dict):
            await self._notice(sid, "Malformed hello.")
            return
        user = self._users.get(sid)
        if user is None:
            await self._notice(sid, "This connection was not let in; reload the page.")
            return
        wanted = data.get("session_id")
        held = isinstance(wanted, str) and _SESSION_ID.match(wanted) and self.gate.holds(user, wanted, data.get("session_key"))
        session_id = wanted if held and isinstance(wanted, str) else uuid.uuid4().hex  # an id alone opens nothing
        current = self._sid_session.get(sid)
        if current is not None and current != session_id:
            await self._notice(sid, "This connection already holds a conversation; open a new one for another.")
            return
        mine = {
            s
            for k, s in self._sid_session.items()
            if k != sid and (known := self._users.get(k)) is not None and known.account == user.account
        }
        if session_id not in mine and len(mine) >= self.config.limits.sessions_per_user:
            await self.sio.emit(
                "rejected",
                {"reason": f"You already have {len(mine)} conversations open here. Close one and try again.", "code": "too_many"},
                to=sid,
            )
            return
        attached = {s for k, s in self._sid_session.items() if k != sid}
        if session_id not in attached and len(attached) >= self.config.server.max_sessions:
            log.warning("rejecting %s: %d sessions already", sid, len(attached))
            await self.sio.emit(
                "rejected",
                {
                    "reason": f"This server is full ({self.config.server.max_sessions} conversations). Try again soon.",
                    "code": "full",
                },
                to=sid,
            )
            return
        for other, sess in list(self._sid_session.items()):  # the same browser on a new socket
            if sess == session_id and other != sid:
                await self._close_peer(other)
                del self._sid_session[other]
                await self.sio.disconnect(other)
        session = self.sessions.get(session_id)
        if session is None:
            session = Session(
                session_id,
                SessionSettings.of(self.config),
                self.services,
                meter=self.meter,
                store=self.store,
                user=user.account,
                turn_times=self._turn_times.setdefault(user.account, deque()),
                turn_judge=self.turn_judge,
            )
            self.sessions[session_id] = session
        elif not session.busy:
            session.conversation.reload()  # another ingress process of this node may have added to it
        if isinstance(data.get("vision"), bool):
            session.vision = data["vision"]
        if isinstance(data.get("hands_free"), bool):
            await session.set_hands_free(data["hands_free"])
        self._sid_session[sid] = session_id
        self.meter.sessions(len(set(self._sid_session.values())))

        async def emit(event: str, payload: dict[str, Any]) -> None:
            await self.sio.emit(event, payload, to=sid)

        session.attach(emit)
        llm = self.config.llm
        await self.sio.emit(
            "welcome",
            {
                "session_id": session_id,
                "session_key": self.gate.session_key(user, session_id),
                "user": user.name,
                "ingress": self.process,
                "history": [e.public() for e in session.history],
                "ice_servers": [s.model_dump(exclude_none=True) for s in self._ice_servers(user.name)],
                "limits": {
                    "max_record_s": self.config.limits.max_record_s,
                    "max_text_chars": self.config.limits.max_text_chars,
                },
                "turn": self._turn_welcome(session),
                "video": {"max_fps": self.config.server.video_max_fps, "max_width": self.config.server.video_max_width},
                "llm": {
                    "backend": llm.backend,
                    "model": model_label(self.config.llm),
                    "quality": model_quality(self.config.llm),
                    "vision": session.vision,
                },
            },
            to=sid,
        )

    def _turn_welcome(self, session: Session) -> dict[str, Any]:
        """What the page is told about turn-taking: the mode, how hands-free ends a turn, and what
        is missing for it to do that as configured."""
        turn, judge = self.config.turn, session.turn_judge
        out: dict[str, Any] = {"hands_free": session.hands_free, "end_of_turn": "model" if judge else "silence"}
        if judge is not None:
            out |= {"turn_models": judge.name, "max_silence_s": turn.max_silence_s}
        else:
            out["end_silence_s"] = turn.end_silence_s
        missing = "; ".join(f"{name}: {reason}" for name, reason in self.turn_models_missing.items())
        if turn.end_of_turn == "model" and judge is None:
            out["problem"] = (
                f"Hands-free ends your turn after {turn.end_silence_s:g} s of silence alone, so a thinking pause may "
                f"cut you off: its turn models could not load ({missing})."
            )
        elif turn.end_of_turn == "model" and missing:
            out["problem"] = f"Hands-free judges the end of your turn with one model of two ({missing})."
        return out

    async def _on_offer(self, sid: str, data: Any) -> None:
        session = self._session(sid)
        if session is None:
            await self._notice(sid, "Say hello before sending an offer.")
            return
        sdp, kind = (data.get("sdp"), data.get("type")) if isinstance(data, dict) else (None, None)
        if not isinstance(sdp, str) or not isinstance(kind, str) or not sdp.strip():
            await self._notice(sid, "The WebRTC offer was malformed.")
            return
        await self._close_peer(sid)
        peer = Peer(session, self._ice_servers("parley-server"), self.config.server.public_address)
        self.peers[sid] = peer
        try:
            answer = await peer.answer(sdp, kind)
        except SdpError as exc:
            await self._close_peer(sid)
            log.warning("session %s: bad offer: %s", session.id[:8], exc)
            await self._notice(sid, f"Could not start audio/video: {exc}.")
            return
        peer.watch_connecting()
        await self.sio.emit("answer", {"sdp": answer.sdp, "type": answer.type}, to=sid)

    def _ice_servers(self, user: str) -> list[IceServer]:
        """The STUN/TURN servers for one user: TURN credentials of their own, short-lived (if a secret is set)."""
        cfg = self.config.server
        return turn_credentials(cfg.ice_servers, os.environ.get(cfg.turn_secret_env), user, cfg.turn_ttl_s)

    async def _close_peer(self, sid: str) -> None:
        peer = self.peers.pop(sid, None)
        if peer is not None:
            self._lateness = [a + b for a, b in zip(self._lateness, peer.track.lateness, strict=True)]
            await peer.close()

    async def _on_talk_start(self, sid: str, data: Any) -> None:
        if session := await self._require(sid):
            if sid not in self.peers:
                await self._notice(sid, "The microphone is not connected yet; wait a moment and try again.", "warn")
                return
            await session.talk_start()

    async def _on_talk_end(self, sid: str, data: Any) -> None:
        if session := await self._require(sid):
            await session.talk_end()

    async def _on_text(self, sid: str, data: Any) -> dict[str, bool]:
        """Acknowledged with ok: true once the session has taken the message as a turn (the page keeps
        it in its box until then); a refused one was explained in a notice."""
        if session := await self._require(sid):
            return {"ok": await session.send_text(data.get("text") if isinstance(data, dict) else None)}
        return {"ok": False}

    async def _on_new_conversation(self, sid: str, data: Any) -> dict[str, bool]:
        """The user starts over: the session forgets its history (in the store too); acknowledged."""
        if session := await self._require(sid):
            await session.forget()
            return {"ok": True}
        return {"ok": False}

    async def _on_stop(self, sid: str, data: Any) -> None:
        if session := await self._require(sid):
            await session.interrupt()

    async def _on_hands_free(self, sid: str, data: Any) -> None:
        if (session := await self._require(sid)) and isinstance(data, dict) and isinstance(data.get("enabled"), bool):
            await session.set_hands_free(data["enabled"])
            await self.sio.emit("turn", {"state": "listening" if session.hands_free else "idle"}, to=sid)

    async def _on_vision(self, sid: str, data: Any) -> None:
        if (session := await self._require(sid)) and isinstance(data, dict) and isinstance(data.get("enabled"), bool):
            session.vision = data["enabled"]

    async def _require(self, sid: str) -> Session | None:
        session = self._session(sid)
        if session is None:
            await self._notice(sid, "This connection has no session yet; reload the page.")
        return session

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        self._users.pop(sid, None)
        await self._close_peer(sid)
        session_id = self._sid_session.pop(sid, None)
        self.meter.sessions(len(set(self._sid_session.values())))
        session = self.sessions.get(session_id) if session_id else None
        if session is not None and session_id not in self._sid_session.values():
            session.attach(None)
            await session.interrupt()
