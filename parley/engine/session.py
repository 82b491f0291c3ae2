"""One browser's conversation, as its transport sees it: where media goes in, speech comes out and
the page is told, the history, and the user's actions. Its turns are decided by its coordinator
(`parley.engine.coordinator`: one loop over typed events from the ear, the holds and the playout).

Invariants:
- A session outlives its socket.io connection and its peer connection: a reconnecting browser
  gets the same history, and audio goes to whichever speech output is current.
- The transport reaches the session only through its public methods: `attach` (the page),
  `connect_output`/`disconnect_output` (speech), `connect_microphone`, `on_audio_frame`,
  `on_video_frame`, `tick`, and the user's actions.
- Nothing a user sends can raise out of here: bad input becomes a notice in the page and a log
  line, and the session goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import av
import numpy as np

from media.echo import EchoCanceller
from parley.engine import floor
from parley.engine.budget import TurnBudget
from parley.engine.clock import Clock, SystemClock
from parley.engine.conversation import Conversation
from parley.engine.coordinator import Coordinator
from parley.engine.ear import Ear
from parley.engine.events import Event
from parley.engine.eyes import Eyes
from parley.engine.messages import Entry, StoreQueue
from parley.engine.metrics import Meter
from parley.engine.ports import Emit, SenderClock, SpeechOutput
from parley.engine.saving import Saving
from parley.engine.services import Services
from parley.engine.settings import SessionSettings
from parley.engine.stages import Stage
from parley.engine.turn import Turn
from parley.engine.turnmodel import TurnJudge
from parley.engine.types import VideoSource
from parley.protocol import Notice, Outbound, TurnStatus

log = logging.getLogger("parley.session")


class Session:
    """A conversation that a browser (re)attaches to by its session id."""

    def __init__(
        self,
        session_id: str,
        settings: SessionSettings,
        services: Services,
        *,
        meter: Meter | None = None,
        clock: Clock | None = None,
        store: StoreQueue | None = None,
        user: str = "",
        budget: TurnBudget | None = None,
        turn_judge: TurnJudge | None = None,
    ) -> None:
        self.id = session_id
        self.who = f"session {session_id[:8]}"
        self.user = user
        """Who holds the session (their account): the models' queue serves users in turn."""
        self.settings = settings
        self.services = services
        self.clock: Clock = clock or SystemClock()
        self.meter = meter or Meter()
        self.conversation = Conversation(
            settings.prompt,
            settings.model,
            store=store,
            session_id=session_id,
            language=settings.language,
            max_messages=settings.limits.history_messages,
        )
        self.saving = Saving(self.conversation, say=self.notice, attached=lambda: self._emit is not None, who=self.who)
        self.output: SpeechOutput | None = None
        """Where speech goes: the current peer connection's audio track; None while no media is connected."""
        turn = settings.turn
        canceller = EchoCanceller(lambda: None if self.output is None else self.output.far) if turn.echo.cancel else None
        judge = turn_judge if turn.end_of_turn.judge == "model" else None
        played = lambda window_s: None if self.output is None else self.output.recent_level(window_s)  # noqa: E731
        ear = Ear(
            settings, post=self._post, clock=self.clock, played_level=played, canceller=canceller, judge=judge, who=self.who
        )
        eyes = Eyes(settings, services, clock=self.clock, meter=self.meter, noted=self.read_ahead, who=self.who)
        stage = Stage(
            settings=settings,
            services=services,
            eyes=eyes,
            conversation=self.conversation,
            clock=self.clock,
            meter=self.meter,
            post=self._post,
            notice=self.notice,
            emit=self.emit,
            output=lambda: self.output,
            read_ahead=self.read_ahead,
            hands_free=lambda: ear.hands_free,
            user=user,
            who=self.who,
        )
        self.turns = Coordinator(stage, ear, budget or TurnBudget(settings.limits.turns_per_minute, self.clock))
        """Its turns, decided (`parley.engine.coordinator`)."""
        self.last_seen = self.clock()
        self._emit: Emit | None = None

    def _post(self, event: Event) -> None:
        self.turns.post(event)

    def read_ahead(self, start: Entry, *, answered: bool = False) -> None:
        self.turns.read_ahead(start, answered=answered)

    # -- its parts, as tests and the transport read them ---------------------------------------

    @property
    def ear(self) -> Ear:
        return self.turns.ear

    @property
    def eyes(self) -> Eyes:
        return self.turns.stage.eyes

    @property
    def stage(self) -> Stage:
        return self.turns.stage

    @property
    def budget(self) -> TurnBudget:
        return self.turns.budget

    @property
    def hearing(self) -> Turn | None:
        return self.turns.hearing

    @property
    def answering(self) -> Turn | None:
        return self.turns.answering

    @property
    def history(self) -> list[Entry]:
        return self.conversation.entries

    @property
    def hands_free(self) -> bool:
        return self.turns.hands_free

    @property
    def listening(self) -> bool:
        """Whether microphone audio is wanted now (push-to-talk between turns: it is not)."""
        return self.turns.ear.recorder.wants_audio

    @property
    def busy(self) -> bool:
        return self.turns.busy

    @property
    def turn_judge(self) -> TurnJudge | None:
        return self.turns.ear.judge

    @property
    def vision(self) -> bool:
        return self.eyes.vision

    @property
    def saved(self) -> bool:
        return self.saving.saved

    # -- the transport's side -----------------------------------------------------------------

    def attach(self, emit: Emit | None) -> None:
        """Route this session's events to a connected page (None while disconnected: the newest camera
        frame goes too, since a session kept for a reconnect must cost little, and a page that comes
        back sends new ones)."""
        self._emit = emit
        self.last_seen = self.clock()
        if emit is None:
            self.eyes.latest_frame = None

    async def announce(self) -> None:
        """Tell a page that has just been welcomed what the turn is doing now (and what `load` found)."""
        await self.emit(TurnStatus(state=self.turns.state))
        for text, level in self.saving.unsaid():
            await self.emit(Notice(level=level, text=text))

    async def load(self) -> None:
        """Take the stored history (once, after creating the session; off the event loop)."""
        await self.saving.load()

    async def reload(self) -> None:
        """Take the stored history back, unless an answer is being given."""
        await self.saving.reload(self.busy)

    async def resync(self) -> None:
        """Called every few seconds: the store is tried again while it fails, and the user told."""
        await self.saving.resync()

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
        self.ear.sender_clock, self.ear.preroll = clock, preroll

    def on_audio_frame(self, frame: av.AudioFrame) -> None:
        """Every decoded microphone frame passes here (cheap while nobody listens)."""
        self.ear.feed(frame)
        floor.speech_goes_on(self.turns.answering, self.ear.recorder.speech_s)

    def on_video_frame(self, frame: av.VideoFrame) -> None:
        self.eyes.latest_frame = frame

    def tick(self) -> None:
        """Called often by the transport: an utterance whose audio stopped arriving still pauses and ends."""
        self.ear.tick()

    # -- the page's side ----------------------------------------------------------------------

    async def emit(self, event: Outbound) -> None:
        if self._emit is None:
            return
        try:
            await self._emit(event.event, event.payload())
        except Exception:  # a page that went away must not break the turn
            log.debug("emit %s failed", event.event, exc_info=True)

    async def notice(self, text: str, level: Literal["info", "warn", "error"] = "info") -> None:
        log.log(logging.WARNING if level == "error" else logging.INFO, "%s: %s", self.who, text)
        await self.emit(Notice(level=level, text=text))

    # -- the user's actions -----------------------------------------------------------------

    async def set_hands_free(self, on: bool) -> None:
        """Switch between push-to-talk and hands-free."""
        await self.turns.set_hands_free(on)

    def set_vision(self, on: bool, source: VideoSource | None = None) -> None:
        """Let the model know what the camera shows with each turn, or not; `source`: the video
        track now carries the camera or a shared screen."""
        self.eyes.switch(on, source)

    async def talk_start(self) -> None:
        """The talk key went down: interrupt any answer and start recording."""
        await self.turns.talk_start()

    async def talk_end(self) -> None:
        """The talk key came up: what was said becomes a turn."""
        await self.turns.talk_end()

    async def send_text(self, text: Any) -> bool:
        """A typed message goes through the same pipeline, without ASR; False if it was refused (the
        page was told why)."""
        return await self.turns.send_text(text)

    async def interrupt(self) -> None:
        """Stop the answer now (Stop, or the page went away): its work cancelled, queued speech dropped."""
        await self.turns.interrupt()

    async def start_over(self) -> None:
        """A new conversation: stop what is going on and forget the history, here and in the store."""
        await self.turns.close()
        self.conversation.clear()
        log.info("%s: the user started a new conversation; the old one is forgotten", self.who)

    async def close(self) -> None:
        await self.turns.close()
