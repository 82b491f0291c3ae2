"""The conversation protocol's handlers: who connects, which session each socket holds, and what
each page event asks of its session (the events are `parley.protocol`'s).

Invariants:
- Every payload is parsed by its protocol model before use; a bad one gets a notice, never an
  exception that could drop the connection or the server.
- A session is driven only through its public methods; the turn state is the session's to say.
- One socket holds at most one session; one session is held by at most one socket (the same
  browser reconnecting takes it over), and by at most one peer connection. Limits: sessions per
  user (the ones kept for a reconnect count too: the user's oldest of those is forgotten first),
  sessions per server, sessions kept for a reconnect per process.
- One offer per socket is handled at a time, at most `limits.offers_per_minute` a minute, and
  checked (`parley.ingress.offers`) before aiortc opens anything for it; a peer whose socket went
  away while its answer was being made is closed, never left behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import uuid
from collections import deque
from dataclasses import replace
from typing import Any, Literal

import socketio
from pydantic import ValidationError

from media.track import LATENESS_BOUNDS_MS
from parley.config import IceServer, ParleyConfig
from parley.engine.budget import TurnBudgets
from parley.engine.messages import StoreQueue
from parley.engine.metrics import Meter
from parley.engine.services import Services
from parley.engine.session import Session
from parley.engine.turnmodel import TurnJudge
from parley.ingress.auth import Gate, Refused, User
from parley.ingress.ice import relay_credentials
from parley.ingress.offers import OfferRefused, check_offer
from parley.ingress.rtc import Peer, SdpError
from parley.policy import model_label, model_quality, session_settings
from parley.protocol import (
    INBOUND,
    Ack,
    Answer,
    HandsFree,
    Hello,
    Inbound,
    Link,
    Message,
    ModelInfo,
    Notice,
    Offer,
    Outbound,
    Rejected,
    Text,
    TurnInfo,
    TurnLimits,
    VideoLimits,
    Vision,
    Welcome,
)

log = logging.getLogger("parley.server")

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class Signalling:
    """socket.io events to and from the pages, and the sessions and peers they hold."""

    def __init__(
        self,
        config: ParleyConfig,
        services: Services,
        sio: socketio.AsyncServer,
        *,
        meter: Meter,
        store: StoreQueue | None,
        process: str,
    ) -> None:
        self.config = config
        self.services = services
        self.sio = sio
        self.meter = meter
        self.store = store
        self.process = process
        self.sessions: dict[str, Session] = {}
        self.peers: dict[str, Peer] = {}
        self.gate = Gate(config)
        """Who is connecting: an invitation, a trusted proxy's header, or anyone (loopback)."""
        self.budgets = TurnBudgets(config.limits.turns_per_minute)
        """Each account's turns this minute (limits.turns_per_minute is per user)."""
        self.turn_judge: TurnJudge | None = None
        """Hands-free's end-of-turn judge, shared by this process's sessions (set when loaded)."""
        self.turn_models_missing: dict[str, str] = {}
        """The turn models that could not load, and why (the page says so)."""
        self.settings = session_settings(config)
        """What each new session is told; `learn_sight` corrects its sight once the vision service has answered."""
        self.sight_problem: str | None = None
        """Why the model cannot see (or sees less than configured), for the page's banner; None: nothing to say."""
        self.closed_lateness = [0] * (len(LATENESS_BOUNDS_MS) + 1)
        """Pacing of the peers already closed (live ones are read from their tracks)."""
        self._sid_session: dict[str, str] = {}
        self._users: dict[str, User] = {}
        self._hellos: dict[str, asyncio.Lock] = {}
        """Each socket's hello in progress (one at a time)."""
        self._offering: set[str] = set()
        """Sockets whose offer is being answered now."""
        self._offers: dict[str, deque[float]] = {}
        """When each socket's recent offers came (for `limits.offers_per_minute`)."""
        for event, model in INBOUND.items():
            sio.on(event, self._guard(model, getattr(self, f"_on_{event}")))
        sio.on("connect", self._on_connect)
        sio.on("disconnect", self._on_disconnect)

    # -- what the server asks ------------------------------------------------------------------

    @property
    def attached(self) -> int:
        """Sessions that a socket holds now."""
        return len(set(self._sid_session.values()))

    def detached(self) -> list[Session]:
        """Sessions no socket holds now."""
        live = set(self._sid_session.values())
        return [session for sid, session in self.sessions.items() if sid not in live]

    async def expire(self, session: Session) -> None:
        """Forget a session (its browser has been gone too long)."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        await session.close()
        self.budgets.keep_only(s.user for s in self.sessions.values())

    async def evict_detached(self, keep: int, *, user: str | None = None, spare: str | None = None) -> int:
        """Forget the oldest sessions no socket holds (of `user`, if given; never `spare`) until `keep`
        remain; their conversations stay in the store. Returns how many went."""
        waiting = sorted(
            (s for s in self.detached() if (user is None or s.user == user) and s.id != spare), key=lambda s: s.last_seen
        )
        gone = waiting[: max(0, len(waiting) - keep)]
        for session in gone:
            await self.expire(session)
            log.info(
                "session %s forgotten for room (kept for a reconnect since %.0f s)",
                session.id[:8],
                time.monotonic() - session.last_seen,
            )
        return len(gone)

    async def drop_withdrawn(self) -> int:
        """Close the sockets whose invitation was withdrawn (revoked) or has expired since they
        connected: a link taken back stops working on open pages too. Returns how many closed."""
        closed = 0
        for sid, user in list(self._users.items()):
            reason = self.gate.still_valid(user)
            if reason is None:
                continue
            log.info("closing %s (user %s): %s", sid, user.name, reason)
            await self._notice(sid, reason)
            await self.sio.disconnect(sid)
            closed += 1
        return closed

    async def tell_media_problems(self) -> None:
        """Say in each page what its media does that the server cannot use (once per peer)."""
        for sid, peer in list(self.peers.items()):
            if (problem := peer.video_problem()) is not None:
                await self._notice(sid, problem, "warn")

    async def close(self) -> None:
        for sid in list(self.peers):
            await self._close_peer(sid)
        for session in self.sessions.values():
            await session.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _guard(self, model: type[Inbound], handler: Any) -> Any:
        """A handler that gets its event's parsed payload and whose failures become notices; what it
        returns is the event's acknowledgement (socket.io sends it back when the page asked for one)."""
        event = model.event

        async def guarded(sid: str, *args: Any) -> Any:
            if len(args) > 1:  # every event of the protocol carries one payload (or none)
                await self._notice(sid, f"'{event}' takes one payload; {len(args)} were sent.", "error")
                return Ack(ok=False).model_dump()
            data = args[0] if args else None
            try:
                payload = model.model_validate({} if data is None else data)
            except ValidationError as exc:
                log.info("malformed %s from %s: %s", event, sid, exc.errors()[0]["msg"] if exc.errors() else exc)
                await self._notice(sid, f"The '{event}' message was malformed.", "error")
                return Ack(ok=False).model_dump()
            try:
                result = await handler(sid, payload)
            except Exception:
                log.exception("handling %s from %s failed", event, sid)
                await self._notice(sid, f"The server could not handle '{event}'. Please try again.", "error")
                return Ack(ok=False).model_dump()
            return result.model_dump() if isinstance(result, Ack) else result

        return guarded

    async def _send(self, sid: str, event: Outbound) -> None:
        await self.sio.emit(event.event, event.payload(), to=sid)

    async def _notice(self, sid: str, text: str, level: Literal["info", "warn", "error"] = "error") -> None:
        await self._send(sid, Notice(level=level, text=text))

    def _session(self, sid: str) -> Session | None:
        session_id = self._sid_session.get(sid)
        return self.sessions.get(session_id) if session_id else None

    async def _require(self, sid: str) -> Session | None:
        session = self._session(sid)
        if session is None:
            await self._notice(sid, "This connection has no session yet; reload the page.")
        return session

    # -- connecting ---------------------------------------------------------------------------

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

    async def _on_hello(self, sid: str, hello: Hello) -> None:
        """A page asks for its conversation (or a new one). One socket's hellos are taken one at a
        time: a session's history is loaded from the store meanwhile, and a burst of hellos must
        not make a session each."""
        lock = self._hellos.setdefault(sid, asyncio.Lock())
        async with lock:
            await self._hello(sid, hello)

    async def _hello(self, sid: str, hello: Hello) -> None:
        user = self._users.get(sid)
        if user is None:
            await self._notice(sid, "This connection was not let in; reload the page.")
            return
        wanted = hello.session_id
        held = wanted is not None and _SESSION_ID.match(wanted) and self.gate.holds(user, wanted, hello.session_key)
        session_id = wanted if held and wanted is not None else uuid.uuid4().hex  # an id alone opens nothing
        current = self._sid_session.get(sid)
        if current is not None and current != session_id:
            await self._notice(sid, "This connection already holds a conversation; open a new one for another.")
            return
        if refusal := await self._refusal(sid, user, session_id):
            await self._send(sid, refusal)
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
                self.settings,
                self.services,
                meter=self.meter,
                store=self.store,
                user=user.account,
                budget=self.budgets.of(user.account),
                turn_judge=self.turn_judge,
            )
            self.sessions[session_id] = session
            await session.load()  # off the event loop; a store that fails leaves it unsaved (the page is told)
        else:
            await session.reload()  # another ingress process of this node may have added to it
        if hello.vision is not None or hello.source is not None:
            session.set_vision(session.vision if hello.vision is None else hello.vision, hello.source)
        if hello.hands_free is not None:
            await session.set_hands_free(hello.hands_free)
        if sid not in self._users:  # the socket left while the history loaded: the session waits detached
            log.info("session %s: its socket left before its welcome", session_id[:8])
            return
        self._sid_session[sid] = session_id
        self.meter.sessions(self.attached)

        async def emit(event: str, payload: dict[str, Any]) -> None:
            await self.sio.emit(event, payload, to=sid)

        session.attach(emit)
        await self._send(sid, self._welcome(session, user))
        await session.announce()

    async def _refusal(self, sid: str, user: User, session_id: str) -> Rejected | None:
        """Why this user cannot hold one more session here (None: they can). The sessions kept for a
        reconnect count toward the user's limit: the oldest of them is forgotten to make room."""
        cap = self.config.limits.sessions_per_user
        mine = {
            s
            for k, s in self._sid_session.items()
            if k != sid and (known := self._users.get(k)) is not None and known.account == user.account
        }
        if session_id not in mine:
            kept = [s for s in self.detached() if s.user == user.account and s.id != session_id]
            if len(mine) + len(kept) >= cap:
                await self.evict_detached(max(0, cap - 1 - len(mine)), user=user.account, spare=session_id)
            if len(mine) >= cap:
                reason = f"You already have {len(mine)} conversations open here. Close one and try again."
                return Rejected(reason=reason, code="too_many")
        attached = {s for k, s in self._sid_session.items() if k != sid}
        if session_id not in attached and len(attached) >= self.config.server.max_sessions:
            log.warning("rejecting %s: %d sessions already", sid, len(attached))
            reason = f"This server is full ({self.config.server.max_sessions} conversations). Try again soon."
            return Rejected(reason=reason, code="full")
        return None

    def _welcome(self, session: Session, user: User) -> Welcome:
        cfg, llm = self.config, self.config.llm
        page = session.history[-cfg.limits.welcome_messages :]
        return Welcome(
            session_id=session.id,
            session_key=self.gate.session_key(user, session.id),
            user=user.name,
            ingress=self.process,
            history=[Message(**e.public()) for e in page],
            earlier=len(session.history) - len(page),
            saved=session.saved,
            ice_servers=[s.model_dump(exclude_none=True) for s in self._ice_servers(user.name)],
            limits=TurnLimits(max_record_s=cfg.limits.max_record_s, max_text_chars=cfg.limits.max_text_chars),
            turn=self.turn_welcome(session),
            video=VideoLimits(max_fps=cfg.webrtc.video_max_fps, max_width=cfg.webrtc.video_max_width),
            llm=ModelInfo(
                backend=llm.backend,
                model=model_label(llm),
                quality=model_quality(llm),
                vision=session.vision,
                sight=session.settings.sight,
                sight_problem=self.sight_problem,
            ),
        )

    async def learn_sight(self) -> None:
        """Ask the vision service what it can find (a text-only model's eyes): with none, or none of
        its detectors loaded, sessions are blind and the banner says why; with some missing, it says which."""
        configured = self.settings.sight
        if configured == "blind":
            if self.config.llm.backend == "local" or not self.config.prompt.vision:
                self.sight_problem = "Parley cannot see your camera or screen: vision is switched off in its configuration."
            return
        if configured == "image":
            return
        try:
            info = await self.services.vision_info()
        except Exception as exc:
            log.warning("the vision service did not answer (%s): sessions cannot see", exc)
            info = None
        if info is None or not info.finds:
            why = "; ".join(info.missing.values()) if info is not None and info.missing else "the vision service is missing"
            log.warning("no scene notes: %s", why)
            self.settings = replace(self.settings, sight="blind")
            self.sight_problem = f"Parley cannot see your camera or screen: its vision models are not installed ({why})."
            return
        finds = ", ".join(info.finds)
        lacks = f" It cannot find {', '.join(info.missing)}: not installed." if info.missing else ""
        self.sight_problem = (
            f"The embedded model cannot see pictures: small offline detectors tell it what they find in your camera "
            f"or screen when you start talking ({finds}), and nothing more.{lacks}"
        )
        costs = ", ".join(f"{k} {v:.0f} ms" for k, v in info.ms_per_frame.items())
        log.info("scene notes: %s; the vision models take %.0f MB, per frame %s", finds, info.memory_mb, costs or "-")

    def turn_welcome(self, session: Session) -> TurnInfo:
        """What the page is told about turn-taking: the mode, how hands-free ends a turn, and what
        is missing for it to do that as configured."""
        turn, judge = self.config.turn, session.turn_judge
        info = TurnInfo(hands_free=session.hands_free, end_of_turn="model" if judge else "silence")
        if judge is not None:
            info.turn_models, info.max_silence_s = judge.name, turn.end_of_turn.max_silence_s
        else:
            info.end_silence_s = turn.end_of_turn.silence_s
        missing = "; ".join(f"{name}: {reason}" for name, reason in self.turn_models_missing.items())
        if turn.end_of_turn.judge == "model" and judge is None:
            info.problem = (
                f"Hands-free ends your turn after {turn.end_of_turn.silence_s:g} s of silence alone, so a thinking pause may "
                f"cut you off: its turn models could not load ({missing})."
            )
        elif turn.end_of_turn.judge == "model" and missing:
            info.problem = f"Hands-free judges the end of your turn with one model of two ({missing})."
        return info

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        self._users.pop(sid, None)
        await self._close_peer(sid)
        session_id = self._sid_session.pop(sid, None)
        self.meter.sessions(self.attached)
        self._offers.pop(sid, None)
        self._hellos.pop(sid, None)
        session = self.sessions.get(session_id) if session_id else None
        if session is not None and session_id not in self._sid_session.values():
            session.attach(None)
            await session.interrupt()
            await self.evict_detached(self.config.server.max_detached_sessions)

    # -- media --------------------------------------------------------------------------------

    async def _on_offer(self, sid: str, offer: Offer) -> None:
        session = self._session(sid)
        if session is None:
            await self._notice(sid, "Say hello before sending an offer.")
            return
        if not offer.sdp.strip():
            await self._notice(sid, "The WebRTC offer was malformed.")
            return
        if sid in self._offering:
            log.info("session %s: an offer came while the last one was being answered", session.id[:8])
            await self._notice(sid, "Audio/video is already being set up; wait for it before trying again.", "warn")
            return
        limits = self.config.limits
        recent = self._offers.setdefault(sid, deque())
        now = time.monotonic()
        while recent and now - recent[0] > 60.0:
            recent.popleft()
        if len(recent) >= limits.offers_per_minute:
            log.warning("session %s: %d offers in a minute; refused one", session.id[:8], len(recent))
            await self._notice(sid, "Audio/video was restarted too often; wait a minute and reload the page.", "warn")
            return
        recent.append(now)
        try:
            checked = check_offer(offer.sdp, max_sections=limits.max_media_sections, max_candidates=limits.max_candidates)
        except OfferRefused as exc:
            log.warning("session %s: refused an offer: %s", session.id[:8], exc)
            await self._notice(sid, f"Could not start audio/video: {exc}.")
            return
        self._offering.add(sid)
        try:
            await self._sdp_answer(sid, session, checked.sdp, offer.type)
        finally:
            self._offering.discard(sid)

    async def _sdp_answer(self, sid: str, session: Session, sdp: str, kind: str) -> None:
        await self._close_peer(sid)
        for other, held in list(self._sid_session.items()):  # one peer per session, whichever socket made it
            if held == session.id and other != sid:
                await self._close_peer(other)
        # The node's own peer has a TURN user of its own per session: coturn's user-quota counts per user.
        ice_servers = self._ice_servers(f"parley-server-{session.id[:8]}")
        cfg = self.config.webrtc
        peer = Peer(
            session,
            ice_servers,
            cfg.public_address,
            red=cfg.red,
            video_max_width=cfg.video_max_width,
            video_max_fps=cfg.video_max_fps,
        )
        self.peers[sid] = peer
        try:
            answer = await peer.answer(sdp, kind)
        except SdpError as exc:
            await self._close_peer(sid)
            log.warning("session %s: bad offer: %s", session.id[:8], exc)
            await self._notice(sid, f"Could not start audio/video: {exc}.")
            return
        except BaseException:
            await self._close_peer(sid)
            raise
        if self.peers.get(sid) is not peer or self._sid_session.get(sid) != session.id:
            # The socket went away (or gave the session up) while the answer was made: nobody will use it.
            log.info("session %s: its socket left while its offer was answered; the peer is closed", session.id[:8])
            if self.peers.get(sid) is peer:
                await self._close_peer(sid)
            else:
                await peer.close()
            return
        peer.watch_connecting()
        await self._send(sid, Answer(sdp=answer.sdp, type=answer.type))

    def _ice_servers(self, user: str) -> list[IceServer]:
        """The STUN/TURN servers for one user: TURN credentials of their own, short-lived (if a secret is set)."""
        cfg = self.config.webrtc
        return relay_credentials(cfg.ice_servers, os.environ.get(cfg.relay_secret_env), user, cfg.relay_ttl_s)

    async def _close_peer(self, sid: str) -> None:
        peer = self.peers.pop(sid, None)
        if peer is not None:
            self.closed_lateness = [a + b for a, b in zip(self.closed_lateness, peer.track.lateness, strict=True)]
            peer.report(self.meter)
            await peer.close()

    # -- the user's actions -------------------------------------------------------------------

    async def _on_talk_start(self, sid: str, _: Inbound) -> None:
        if session := await self._require(sid):
            if sid not in self.peers:
                await self._notice(sid, "The microphone is not connected yet; wait a moment and try again.", "warn")
                return
            await session.talk_start()

    async def _on_talk_end(self, sid: str, _: Inbound) -> None:
        if session := await self._require(sid):
            await session.talk_end()

    async def _on_text(self, sid: str, message: Text) -> Ack:
        """Acknowledged with ok: true once the session has taken the message as a turn (the page keeps
        it in its box until then); a refused one was explained in a notice."""
        if session := await self._require(sid):
            return Ack(ok=await session.send_text(message.text))
        return Ack(ok=False)

    async def _on_new_conversation(self, sid: str, _: Inbound) -> Ack:
        """The user starts over: the session forgets its history (in the store too); acknowledged."""
        if session := await self._require(sid):
            await session.start_over()
            return Ack(ok=True)
        return Ack(ok=False)

    async def _on_stop(self, sid: str, _: Inbound) -> None:
        if session := await self._require(sid):
            await session.interrupt()

    async def _on_hands_free(self, sid: str, switch: HandsFree) -> None:
        if session := await self._require(sid):
            await session.set_hands_free(switch.enabled)

    async def _on_vision(self, sid: str, switch: Vision) -> None:
        if session := await self._require(sid):
            session.set_vision(switch.enabled, switch.source)

    async def _on_link(self, sid: str, link: Link) -> None:
        """The page's link-quality banner changed: one log line (the page sends only changes), nothing else."""
        session = self._session(sid)
        measured = {"loss_in": link.loss_in, "loss_out": link.loss_out, "rtt_s": link.rtt_s}
        said = ", ".join(f"{name} {value:.3g}" for name, value in measured.items() if value is not None) or "nothing measured"
        log.info("session %s: the page says its link is %s (%s)", session.id[:8] if session else f"sid {sid}", link.state, said)
