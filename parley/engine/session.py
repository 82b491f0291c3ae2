"""One browser's conversation: it wires the ear (`listening`), the answer (`answer`), speech over the
answer (`hold`) and the history, and it alone says what the turn is doing.

Invariants:
- At most one answer runs at a time. A new turn, the talk key, Stop, or (hands-free) the user
  speaking over the answer interrupts it: its work is cancelled, queued speech dropped, and the
  history keeps only the words that had been played (the rest is marked unspoken).
- Hands-free, speech over an answer holds it at once (the output plays silence, nothing is lost);
  `parley.engine.hold` settles it exactly once: an interruption, or the answer goes on.
- The turn state (`turn` events: idle, listening, hearing, thinking, speaking) has one writer:
  this class. A page that is welcomed is told the current state (`announce`).
- A session outlives its socket.io connection and its peer connection: a reconnecting browser
  gets the same history, and audio goes to whichever speech output is current.
- The transport reaches the session only through its public methods: `attach` (the page),
  `connect_output`/`disconnect_output` (speech), `connect_microphone`, `on_audio_frame`,
  `on_video_frame`, `tick`, and the user's actions.
- Nothing a user sends can raise out of here: bad input becomes a notice in the page and a log
  line, and the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import av
import numpy as np

from media.echo import EchoCanceller
from media.image import frame_to_data_url, frame_to_jpeg
from parley.config import LimitsConfig, LLMConfig, ParleyConfig, TurnConfig, sight
from parley.engine.answer import Answering, TurnTimes
from parley.engine.budget import TurnBudget
from parley.engine.conversation import Conversation, estimate_tokens
from parley.engine.hold import Overlap
from parley.engine.listening import Listener
from parley.engine.messages import Entry, StoreQueue
from parley.engine.metrics import Meter
from parley.engine.ports import Emit, SenderClock, SpeechOutput
from parley.engine.recorder import Recorder
from parley.engine.reply import Reply
from parley.engine.services import Services
from parley.engine.turnmodel import TurnJudge
from parley.engine.types import FRAME_SIDE, SceneNote, Sight, VideoSource
from parley.engine.utterance import Utterance
from parley.protocol import Notice, Outbound, State, Turn, TurnState

log = logging.getLogger("parley.session")

NO_PICTURE = "no picture is coming from the browser"
NOT_SAVED = (
    "Your earlier messages could not be loaded and this conversation is not being saved right now; Parley will keep trying."
)
NOT_STORING = "Your latest messages are not being saved right now; Parley will keep trying."
SAVED_AGAIN = "Your conversation is being saved again."


@dataclass(frozen=True)
class SessionSettings:
    """What a session needs to know of the configuration."""

    turn: TurnConfig
    limits: LimitsConfig
    llm: LLMConfig
    voice: str | None = None
    language: str | None = "en"
    """The conversation's language (the ASR's), for telling backchannels."""
    sight: Sight = "blind"
    """How the model learns what the camera shows (`parley.config.sight`; "blind" where the vision service is missing)."""
    scene_wait_s: float = 1.5
    """How long a turn whose words are ready may still wait for its scene note."""

    @classmethod
    def of(cls, config: ParleyConfig) -> SessionSettings:
        return cls(
            turn=config.turn,
            limits=config.limits,
            llm=config.llm,
            voice=config.tts.voice,
            language=config.asr.language,
            sight=sight(config),
            scene_wait_s=config.vision.wait_s,
        )


class Session:
    """A conversation that a browser (re)attaches to by its session id."""

    def __init__(
        self,
        session_id: str,
        settings: SessionSettings,
        services: Services,
        *,
        meter: Meter | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: StoreQueue | None = None,
        user: str = "",
        budget: TurnBudget | None = None,
        turn_judge: TurnJudge | None = None,
    ) -> None:
        self.id = session_id
        self.user = user
        """Who holds the session (their account): the models' queue serves users in turn."""
        self.settings = settings
        self.services = services
        self.clock = clock
        self.meter = meter or Meter()
        self.budget = budget or TurnBudget(settings.limits.turns_per_minute, clock)
        """The user's turns this minute: shared by all of the user's sessions (the limit is per user)."""
        self.conversation = Conversation(
            settings.llm,
            store=store,
            session_id=session_id,
            language=settings.language,
            max_messages=settings.limits.history_messages,
        )
        """The history; `load` takes the stored one (the constructor does not: it never waits on the store)."""
        self._unsaid: list[tuple[str, Literal["info", "warn", "error"]]] = []
        """Notices about the store made before a page was attached: `announce` says them."""
        self._told_failing = False
        """The user was told the store is failing (`resync`)."""
        self.output: SpeechOutput | None = None
        """Where speech goes: the current peer connection's audio track; None while no media is connected."""
        self.listener = Listener(self)
        self.overlap = Overlap(self)
        canceller = EchoCanceller(lambda: None if self.output is None else self.output.far) if settings.turn.echo_cancel else None
        limit = settings.limits.max_record_s
        self.recorder = Recorder(settings.turn, max_record_s=limit, clock=clock, canceller=canceller, gate=self.listener.not_echo)
        self.turn_judge = turn_judge if settings.turn.end_of_turn == "model" else None
        """Hands-free: judges at a pause how much silence ends the turn (None: `end_silence_s` does)."""
        if self.turn_judge is not None:
            self.recorder.end_silence_s = settings.turn.max_silence_s
        self.vision = settings.sight != "blind"
        """The user lets the model know what the camera shows (the page's switch)."""
        self.source: VideoSource = "camera"
        """What the video track carries now: the camera or a shared screen."""
        self.latest_frame: av.VideoFrame | None = None
        self.last_seen = clock()
        self.answering: Answering | None = None
        """The answer being given now."""
        self._emit: Emit | None = None
        self._turn: asyncio.Task[None] | None = None
        self._state: TurnState = self.resting()
        self._background: set[asyncio.Task[Any]] = set()

    # -- the transport's side -----------------------------------------------------------------

    @property
    def history(self) -> list[Entry]:
        return self.conversation.entries

    @property
    def hands_free(self) -> bool:
        return self.recorder.hands_free

    @property
    def listening(self) -> bool:
        """Whether microphone audio is wanted now (push-to-talk between turns: it is not)."""
        return self.recorder.listening

    @property
    def busy(self) -> bool:
        return self._turn is not None and not self._turn.done()

    def attach(self, emit: Emit | None) -> None:
        """Route this session's events to a connected page (None while disconnected: the newest camera
        frame goes too, since a session kept for a reconnect must cost little, and a page that comes
        back sends new ones)."""
        self._emit = emit
        self.last_seen = self.clock()
        if emit is None:
            self.latest_frame = None

    async def announce(self) -> None:
        """Tell a page that has just been welcomed what the turn is doing now (and what `load` found)."""
        await self.emit(Turn(state=self._state))
        unsaid, self._unsaid = self._unsaid, []
        for text, level in unsaid:
            await self.emit(Notice(level=level, text=text))

    @property
    def saved(self) -> bool:
        """False while the conversation is not being stored (its stored history could not be read)."""
        return self.conversation.saved

    async def load(self) -> None:
        """Take the stored history (once, after creating the session; off the event loop). If the
        store fails, the session goes on unsaved and the user is told (`resync` tries again)."""
        if not await self.conversation.load():
            await self._store_notice(NOT_SAVED, "warn")

    async def reload(self) -> None:
        """Take the stored history back, unless an answer is being given (another ingress process
        of this node may have added to it); while not saved, `resync`."""
        if not self.saved:
            await self.resync()
        elif not self.busy:
            await self.conversation.reload()

    async def resync(self) -> None:
        """Called every few seconds (the server's housekeeping). While not saved: try the store
        again; once it answers, the history held here is stored after the stored one and the user
        is told. While saved: tell the user when the store starts failing (their messages wait to
        be written) and when it works again."""
        if not self.saved:
            if await self.conversation.resync():
                self._told_failing = False
                await self._store_notice(SAVED_AGAIN, "info")
            return
        failing = not self.conversation.store_ok
        if failing != self._told_failing:
            self._told_failing = failing
            await self._store_notice(NOT_STORING if failing else SAVED_AGAIN, "warn" if failing else "info")

    async def _store_notice(self, text: str, level: Literal["info", "warn", "error"]) -> None:
        if self._emit is None:  # said when a page is welcomed; an outage over by then goes unsaid
            log.info("session %s: %s", self.id[:8], text)
            unsaid = [(t, lv) for t, lv in self._unsaid if t not in (NOT_SAVED, NOT_STORING, SAVED_AGAIN)]
            self._unsaid = unsaid if len(unsaid) < len(self._unsaid) and text == SAVED_AGAIN else [*unsaid, (text, level)]
        else:
            await self.notice(text, level)

    def connect_output(self, output: SpeechOutput) -> None:
        """Send speech through a new peer connection's output from now on."""
        old, self.output = self.output, output
        if old is not None and old is not output:
            old.clear()

    def disconnect_output(self, output: SpeechOutput) -> None:
        """That output is gone: speech goes nowhere until another connects."""
        if self.output is output:
            self.output = None

    def connect_microphone(self, clock: SenderClock, preroll: Callable[[], np.ndarray] | None = None) -> None:
        """The microphone's sender clock, and the audio it kept while nobody listened (decoded on call)."""
        self.listener.sender_clock, self.listener.preroll = clock, preroll

    def on_audio_frame(self, frame: av.AudioFrame) -> None:
        """Every decoded microphone frame passes here (cheap while nobody listens)."""
        self.listener.on_audio_frame(frame)

    def on_video_frame(self, frame: av.VideoFrame) -> None:
        self.latest_frame = frame

    def tick(self) -> None:
        """Called often by the transport: an utterance whose audio stopped arriving still pauses and ends."""
        if self.recorder.utterance is not None:
            self.listener.tick()

    # -- the page's side ----------------------------------------------------------------------

    async def emit(self, event: Outbound) -> None:
        if self._emit is None:
            return
        try:
            await self._emit(event.event, event.payload())
        except Exception:  # a page that went away must not break the turn
            log.debug("emit %s failed", event.event, exc_info=True)

    async def notice(self, text: str, level: Literal["info", "warn", "error"] = "info") -> None:
        log.log(logging.WARNING if level == "error" else logging.INFO, "session %s: %s", self.id[:8], text)
        await self.emit(Notice(level=level, text=text))

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in the background (from a sync callback), keeping a reference until it ends."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def set_state(self, state: TurnState) -> None:
        if state != self._state:
            self._state = state
            self.spawn(self.emit(Turn(state=state)))

    def resting(self) -> TurnState:
        return "listening" if self.recorder.hands_free else "idle"

    def rest_if_idle(self) -> None:
        if not self.busy:
            self.set_state(self.resting())

    async def show_answer_state(self) -> None:
        """After a hold: the page shows the answer's own state again, and the turn speaking."""
        answering = self.answering
        if answering is not None and self.busy:
            await self.emit(State(id=answering.entry.id, state=answering.entry.state))
        if self.busy:
            self.set_state("speaking")

    # -- user actions -----------------------------------------------------------------------

    async def set_hands_free(self, on: bool) -> None:
        """Switch between push-to-talk and hands-free."""
        if on == self.recorder.hands_free:
            return
        await self.listener.drop()
        self.recorder.set_hands_free(on)
        self.rest_if_idle()

    def set_vision(self, on: bool, source: VideoSource | None = None) -> None:
        """Let the model know what the camera shows with each turn, or not; `source`: the video
        track now carries the camera or a shared screen."""
        self.vision = on and self.settings.sight != "blind"
        if source is not None:
            self.source = source

    async def talk_start(self) -> None:
        """The talk key went down: interrupt any answer and start recording."""
        await self.interrupt()
        await self.listener.press()

    async def talk_end(self) -> None:
        """The talk key came up: what was said becomes a turn."""
        await self.listener.release()

    async def send_text(self, text: Any) -> bool:
        """A typed message goes through the same pipeline, without ASR; False if it was refused (the
        page was told why)."""
        problem, text = self._check_text(text)
        if problem:
            await self.notice(problem, "error")
            return False
        if not text:
            return False
        await self.interrupt()
        if not self.budget.take():
            await self.notice("Too many turns in a minute; wait a moment and try again.", "warn")
            return False
        frame, sent = self.latest_frame, self.clock()
        scene = self.look(frame)

        async def typed() -> None:
            user = await self.user_entry(text, frame, scene)
            await self.answer(user, self.reply_to(user), TurnTimes(decided=sent), asr_s=None)

        self.start_turn(typed)
        return True

    def _check_text(self, text: Any) -> tuple[str, str]:
        """(why a typed message cannot be a turn, or ""; the message stripped)."""
        if not isinstance(text, str):
            return "That message was not text.", ""
        text = text.strip()
        limit = self.settings.limits.max_text_chars
        if len(text) > limit:
            return f"Messages are limited to {limit} characters; yours has {len(text)}.", text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "That message holds characters that are not valid text (UTF-8); it was not sent.", text
        if estimate_tokens(text) > self.conversation.prompt_budget_tokens():
            return "That message is too long for the language model; please shorten it.", text
        return "", text

    async def interrupt(self, *, keep_utterance: bool = False) -> None:
        """Stop the answer now: cancel the turn and drop queued speech."""
        self.overlap.forget()
        if self.output is not None:
            self.output.clear()
        turn, self._turn = self._turn, None
        if turn is not None and not turn.done():
            turn.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await turn
        if keep_utterance:
            self.listener.look()  # speech over the answer became a turn: its scene note now
        elif not self.recorder.hands_free:
            self.set_state(self.resting())

    async def forget(self) -> None:
        """A new conversation: stop what is going on and forget the history, here and in the store."""
        await self.listener.drop()
        await self.interrupt()
        self.conversation.clear()
        self.set_state(self.resting())
        log.info("session %s: the user started a new conversation; the old one is forgotten", self.id[:8])

    async def close(self) -> None:
        await self.listener.drop()
        await self.interrupt()

    async def drop_utterance(self, utterance: Utterance) -> None:
        """Forget `utterance` if it is the one being said (it was no turn): its audio and its work."""
        await self.listener.drop(utterance)

    # -- turns and answers ----------------------------------------------------------------------

    def reply_to(self, user: Entry) -> Reply:
        sight = self.settings.sight if self.vision or self.settings.sight == "note" else "blind"
        messages = self.conversation.messages(sight=sight, then=user)
        return Reply(
            uuid.uuid4().hex[:12],
            messages,
            self.services,
            voice=self.settings.voice,
            user=self.user,
            first_clause_words=self.settings.turn.first_clause_words if self.output is not None else None,
            first_max_words=self.settings.turn.first_piece_max_words if self.output is not None else None,
            clock=self.clock,
        ).start()

    async def image(self, frame: av.VideoFrame | None) -> str | None:
        if frame is None or not self.vision or self.settings.sight != "image":
            return None
        return await asyncio.to_thread(frame_to_data_url, frame)

    def look(self, frame: av.VideoFrame | None) -> asyncio.Task[SceneNote | None] | None:
        """Start making the scene note of `frame` (a text-only model's eyes), or None where no note
        is wanted. Called when the user starts talking, so the note is made while they speak."""
        if frame is None or not self.vision or self.settings.sight != "note":
            return None
        source = self.source
        began = self.clock()

        async def describe() -> SceneNote | None:
            try:
                jpeg = await asyncio.to_thread(frame_to_jpeg, frame, max_side=FRAME_SIDE[source])
                note = await self.services.describe(jpeg, source)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("session %s: no scene note for this turn: %s", self.id[:8], exc)
                return None
            took = self.clock() - began
            self.meter.stage("vision", took)
            self.read_ahead(Entry(role="user", text="", scene=note.text, source=note.source))
            # what the note says stays out of the info log: it may hold the text of someone's screen
            log.info(
                "session %s: %s note of a %dx%d frame in %.0f ms", self.id[:8], source, frame.width, frame.height, 1000 * took
            )
            log.debug("session %s: the note: %s", self.id[:8], note.text or "(nothing found)")
            return note

        return asyncio.get_running_loop().create_task(describe())

    def read_ahead(self, start: Entry, *, answered: bool = False) -> None:
        """Let a local model read the prompt up to the user's words (the system prompt, the history and
        any scene note) while they talk, or (`answered`) once an answer's speech is synthesized, while
        it plays: the turn's request then reads only the words. Without this, a note cost the first token ~300 ms
        on 2 cores (benchmarks/voice_to_voice.py --camera), and once the history window moved on
        (`llm.history_messages`), the whole prompt cost seconds to read again."""
        if self.settings.sight == "image" or (self.busy and not answered) or not self.settings.llm.read_ahead:
            return
        messages = self.conversation.prompt_start(sight=self.settings.sight, then=start)

        async def prime() -> None:
            try:
                await self.services.prime(messages, user=self.user)
            except Exception:  # a hint only
                log.debug("session %s: priming failed", self.id[:8], exc_info=True)

        self.spawn(prime())

    def look_or_say_blind(self, frame: av.VideoFrame | None) -> asyncio.Task[SceneNote | None] | None:
        """At an utterance's start: start its scene note (`look`), or, with none coming, let the model
        read ahead that it cannot see."""
        scene = self.look(frame)
        if scene is None and (why := self.why_blind()) is not None:
            self.read_ahead(Entry(role="user", text="", blind=why, source=self.source))
        return scene

    def why_blind(self) -> str | None:
        """Why a turn with no scene note has none, said in front of a local model's words when they ask
        about the picture (`parley.engine.sight.about_scene`); None where the model is not told so
        with its words (a vision endpoint, or an endpoint that reads text only: the system prompt says
        it). Said with the words because, told only in the system prompt, every local model described
        a camera it could not see (benchmarks/llm_quiz.py's vision quiz)."""
        if self.settings.sight == "image" or self.settings.llm.backend != "local":
            return None
        if self.settings.sight == "blind":
            return "Parley cannot see on this server"
        return "the user switched vision off" if not self.vision else NO_PICTURE

    async def user_entry(self, words: str, frame: av.VideoFrame | None, scene: asyncio.Task[SceneNote | None] | None) -> Entry:
        """The user's turn as the history keeps it: the words, the frame (a vision model) or its
        scene note (a text-only one). A note still being made is waited for at most `scene_wait_s`;
        the wait is the turn's `vision_wait` (what the note added to the critical path)."""
        note: SceneNote | None = None
        waited: float | None = None
        blind = self.why_blind() if scene is None else None
        if scene is not None:
            began = self.clock()
            try:
                note = await asyncio.wait_for(asyncio.shield(scene), self.settings.scene_wait_s)
            except TimeoutError:
                log.warning(
                    "session %s: the scene note took over %.1f s; this turn goes without", self.id[:8], self.settings.scene_wait_s
                )
            waited = self.clock() - began  # the turn reports it (TurnMetrics.vision_wait)
            if note is None:
                blind = "its detectors could not look this time"
        return Entry(
            role="user",
            text=words,
            image=await self.image(frame),
            scene=None if note is None else note.text,
            blind=blind,
            source=self.source if note is None else note.source,
            scene_wait_s=waited,
        )

    def start_turn(self, work: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            self.meter.turn()
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session %s: turn failed", self.id[:8])
                await self.notice("Something went wrong with that turn; please try again.", "error")
            finally:
                if self.listener.utterance is None or not self.recorder.speaking:
                    self.set_state(self.resting())

        self._turn = asyncio.get_running_loop().create_task(run())

    async def answer(self, user: Entry, reply: Reply, times: TurnTimes, *, asr_s: float | None) -> None:
        """Give the answer to a turn (see `parley.engine.answer`)."""
        answering = self.answering = Answering(self, user, reply, times, asr_s=asr_s)
        try:
            await answering.run()
        finally:
            if self.answering is answering:
                self.answering = None
                self.overlap.forget()
