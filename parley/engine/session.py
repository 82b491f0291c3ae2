"""One browser's conversation: it wires the recorder, the utterance, the reply and the history.

Invariants:
- At most one answer runs at a time. A new turn, the talk key, Stop, or (hands-free) the user
  speaking over the answer interrupts it: its work is cancelled, queued speech dropped, and the
  history keeps only the words that had been played (the rest is marked unspoken).
- Work may start before a turn is over (at a pause in speech: the transcript and the answer), but
  nothing of it is shown or spoken until the turn is confirmed: the key released (push-to-talk),
  or the silence the turn judge gave the pause (`end_silence_s` without a judge) in hands-free.
  Speech resuming cancels it.
- The assistant's own voice coming back through the microphone is not the user: the echo
  canceller removes what the track sent from the microphone audio before anything hears it, and,
  as a second line, while it plays the microphone counts as speech only when it is louder than
  what was played, less a margin.
- Hands-free, speech over an answer holds it at once (the track plays silence, nothing is lost).
  The hold is settled exactly once: words that are no backchannel (read at any pause), or speech
  longer than a backchannel, interrupt it, and the speech becomes the turn; an utterance that ends
  as a backchannel, or with no words, or with the answer's own words (`parley.engine.backchannel`)
  resumes the answer and is no turn. Until then, a pause whose speech had no words or the
  answer's own words lets the answer play on where it stopped, and speech coming back holds it
  again; a resume from a hold still holding starts the sentence over.
- A session outlives its socket.io connection and its peer connection: a reconnecting browser
  gets the same history, and audio goes to whichever pacing track is current.
- Nothing a user sends can raise out of here: bad input becomes a notice in the page and a log
  line, and the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, replace
from typing import Any, Literal

import av
import numpy as np

from media.echo import EchoCanceller
from media.image import frame_to_data_url
from media.track import PacingTrack
from media.vad import RATE
from parley.config import LimitsConfig, LLMConfig, ParleyConfig, TurnConfig
from parley.engine.backchannel import BACKCHANNEL_MAX_S, ECHO_MEMORY_S, is_backchannel, is_own_words, words_of
from parley.engine.conversation import Conversation, ConversationStore, Entry, estimate_tokens
from parley.engine.metrics import STAGES, Meter, TurnMetrics
from parley.engine.recorder import Recorder, TurnEvent
from parley.engine.reply import Reply
from parley.engine.services import Services
from parley.engine.turnmodel import SOUND_TAIL, TurnJudge
from parley.engine.utterance import Speculation, Utterance
from parley.ingress.senderclock import SenderClock, rtp_diff

log = logging.getLogger("parley.session")

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
TurnState = Literal["idle", "listening", "hearing", "thinking", "speaking"]

RELEASE_TAIL_S = 0.1
"""Audio still taken after the key comes up while speech was going on: RTP lags the socket.io event."""

RELEASE_WAIT_S = 2.0
"""At most this long, a release waits for the microphone audio the browser had sent by then
(a busy server decodes it late): a turn is never cut short for the server's own delay."""


@dataclass(frozen=True)
class SessionSettings:
    """What a session needs to know of the configuration."""

    turn: TurnConfig
    limits: LimitsConfig
    llm: LLMConfig
    voice: str | None = None
    language: str | None = "en"
    """The conversation's language (the ASR's), for telling backchannels."""

    @classmethod
    def of(cls, config: ParleyConfig) -> SessionSettings:
        return cls(turn=config.turn, limits=config.limits, llm=config.llm, voice=config.tts.voice, language=config.asr.language)


NO_WORDS_GRACE_S = 0.4
"""A held answer whose speech so far has no words plays on once the pause has lasted this long
more (a first syllable the ASR could not read yet, such as "wait", is followed by more speech)."""

HOLD_LIMIT_S = 4.0
"""A hold not settled by then (the transcript never came) becomes an interruption."""


@dataclass
class Hold:
    """An answer held because the user spoke over it: settled once, when the utterance ends (or
    sooner, when it is plainly an interruption)."""

    utterance: Utterance | None
    held: bool = True
    """Whether its audio is stopped now (a pause with no words of the user's lets it play on)."""


@dataclass(frozen=True)
class TurnTimes:
    """When a turn ended, on the session's clock (the stage definitions are in parley.engine.metrics)."""

    decided: float
    """When the server learned the turn is over: the release event arrived, the end-of-turn
    decision was made (hands-free), or the message arrived."""
    spoke_until: float | None = None
    """Hands-free: when the last speech audio arrived (the end-of-turn delay counts from here)."""
    head_start: float = 0.0
    """How long the work the turn used (transcript and answer) had been running at `decided`."""

    @property
    def anchor(self) -> float:
        """Where the user starts waiting: the end of speech (hands-free), else `decided`."""
        return self.decided if self.spoke_until is None else self.spoke_until


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
        store: ConversationStore | None = None,
        user: str = "",
        turn_times: deque[float] | None = None,
        turn_judge: TurnJudge | None = None,
    ) -> None:
        self.id = session_id
        self.user = user
        """Who holds the session (their account): the models' queue serves users in turn."""
        self.settings = settings
        self.services = services
        self.conversation = Conversation(settings.llm, store=store, session_id=session_id)
        canceller = EchoCanceller(lambda: None if self.track is None else self.track.far) if settings.turn.echo_cancel else None
        self.recorder = Recorder(settings.turn, max_record_s=settings.limits.max_record_s, clock=clock, canceller=canceller)
        self.recorder.gate = self._not_echo
        self._hold: Hold | None = None
        """The answer held while the user speaks over it (hands-free), until that is settled."""
        self._answering: Entry | None = None
        """The answer being given now (its history entry)."""
        self._reply: Reply | None = None
        """And its reply."""
        self.turn_judge = turn_judge if settings.turn.end_of_turn == "model" else None
        """Hands-free: judges at a pause how much silence ends the turn (None: `end_silence_s` does)."""
        if self.turn_judge is not None:
            self.recorder.end_silence_s = settings.turn.max_silence_s
        self.vision = settings.llm.vision
        self.track: PacingTrack | None = None
        """Where speech goes: the current peer connection's track; None while no media is connected."""
        self.latest_frame: av.VideoFrame | None = None
        self.last_seen = clock()
        self._emit: Emit | None = None
        self._meter = meter or Meter()
        self._clock = clock
        self._turn: asyncio.Task[None] | None = None
        self._utterance: Utterance | None = None
        self._turn_times: deque[float] = turn_times if turn_times is not None else deque()
        """When recent turns started: shared by all of the user's sessions (the limit is per user)."""
        self._state: TurnState = self._resting()
        self._background: set[asyncio.Task[Any]] = set()
        self.preroll_source: Callable[[], np.ndarray] | None = None
        """The microphone audio kept (undecoded) while nobody listened, decoded: 48 kHz mono float."""
        self.sender_clock: SenderClock | None = None
        """Where the browser's microphone stream is now (RTP timestamps), from its packets' arrivals."""
        self._arrived_at_press = 0
        """The sender's timestamp where the audio that had arrived at the latest press ended."""

    # -- wiring -----------------------------------------------------------------------------

    @property
    def history(self) -> list[Entry]:
        return self.conversation.entries

    @property
    def hands_free(self) -> bool:
        return self.recorder.hands_free

    def attach(self, emit: Emit | None) -> None:
        """Route this session's events to a connected page (None while disconnected)."""
        self._emit = emit
        self.last_seen = self._clock()

    def set_track(self, track: PacingTrack | None) -> None:
        """Send speech through a new peer connection's track from now on (None: nowhere)."""
        old, self.track = self.track, track
        if old is not None and old is not track:
            old.clear()

    @property
    def busy(self) -> bool:
        return self._turn is not None and not self._turn.done()

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        if self._emit is None:
            return
        try:
            await self._emit(event, data)
        except Exception:  # a page that went away must not break the turn
            log.debug("emit %s failed", event, exc_info=True)

    async def notice(self, text: str, level: Literal["info", "warn", "error"] = "info") -> None:
        log.log(logging.WARNING if level == "error" else logging.INFO, "session %s: %s", self.id[:8], text)
        await self.emit("notice", {"level": level, "text": text})

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in the background (from a sync callback), keeping a reference until it ends."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _set_state(self, state: TurnState) -> None:
        if state != self._state:
            self._state = state
            self._spawn(self.emit("turn", {"state": state}))

    def _resting(self) -> TurnState:
        return "listening" if self.recorder.hands_free else "idle"

    # -- media in ---------------------------------------------------------------------------

    def on_audio_frame(self, frame: av.AudioFrame) -> None:
        """Every decoded microphone frame passes here (cheap while nobody listens)."""
        for event in self.recorder.feed(frame):
            self._on_turn_event(event)
        hold = self._hold
        if hold is not None and self.recorder.speech_s > BACKCHANNEL_MAX_S:
            self._spawn(self._settle(hold, goes_on=False, why=f"over {BACKCHANNEL_MAX_S:g} s of speech"))

    def tick(self) -> None:
        """Called often (every `TICK_S`) by the server: an utterance whose audio stopped arriving
        still pauses and ends."""
        for event in self.recorder.fill_silence(self._sender_stopped):
            self._on_turn_event(event)

    def _sender_stopped(self) -> bool:
        """The browser has stopped sending microphone audio (a microphone that sends nothing while
        quiet), and every packet it sent is on the tape: nothing more is on its way."""
        clock, heard = self.sender_clock, self.recorder.heard_to
        if clock is None or clock.sending() or self.recorder.heard_rate not in (0, clock.rate):
            return False
        arrived = clock.arrived_to()
        return arrived is None or heard is None or rtp_diff(arrived, heard) <= 0

    def on_video_frame(self, frame: av.VideoFrame) -> None:
        self.latest_frame = frame

    def _not_echo(self, level: float) -> bool:
        """Whether a microphone window this loud can be the user while Parley itself speaks."""
        track = self.track
        if track is None:
            return True
        played = track.recent_level(self.settings.turn.echo_window_s)
        if played > 0 and level < played * 10 ** (-self.settings.turn.echo_margin_db / 20):
            return False
        canceller = self.recorder.canceller
        return canceller is None or not canceller.echo_like()

    def _on_turn_event(self, event: TurnEvent) -> None:
        turn = self.settings.turn
        if event.kind == "start":
            if self.recorder.hands_free:
                self._begin_utterance(event.sample)
        elif event.kind == "speech":
            if self.recorder.hands_free and turn.barge_in and self.busy:
                if turn.backchannels:
                    self._hold_answer()
                else:
                    log.info("session %s: barge-in", self.id[:8])
                    self._spawn(self.interrupt(keep_utterance=True))
        elif event.kind == "pause":
            if turn.speculate and self._utterance is not None:
                self._speculate(self._utterance, event.sample)
            if self.turn_judge is not None and self.recorder.hands_free and self._utterance is not None:
                self._spawn(self._judge(event.sample))
        elif event.kind == "resume":
            if self._hold is not None and self._hold.utterance is self._utterance:
                self._hold_answer()  # speech again after a pause that let the answer play on
            self._set_state("hearing")
            if self._utterance is not None:
                self._utterance.resumed(event.sample)  # first: a piece kept now survives the cancel
                if self._utterance.speculation is not None:
                    self._spawn(self._utterance.speculation.cancel())
                    self._utterance.speculation = None
        elif event.kind == "end":
            now = self._clock()
            spoke_until = min(now, self.recorder.wall_time(event.sample))
            self._spawn(self._end_utterance(event, TurnTimes(decided=now, spoke_until=spoke_until)))

    async def _judge(self, paused_at: int) -> None:
        """Hands-free: speech has paused. The turn judge reads the transcript made at this pause
        (the speculation's) and, if that does not decide, hears the speech up to the pause; it says
        how much silence ends the turn: `quiet_s` (it is over), a little more, or a lot (a thinking
        pause). Speech coming back makes the verdict moot."""
        judge, utterance, start = self.turn_judge, self._utterance, self.recorder.utterance
        if judge is None or utterance is None or start is None:
            return
        end = paused_at + SOUND_TAIL
        audio = self.recorder.audio(max(start, end - 8 * RATE), end)
        transcript = None
        speculation = utterance.speculation
        if speculation is not None and speculation.until == paused_at:
            try:
                transcript = await asyncio.shield(speculation.transcript)
            except asyncio.CancelledError:
                if not speculation.transcript.cancelled():
                    raise
                return  # speech came back: this pause is over
            except Exception:
                transcript = None  # ASR failed: the turn itself will say so; judge by the sound
        if self.recorder.paused_at != paused_at:
            return
        began = self._clock()
        try:
            verdict = await asyncio.to_thread(judge.judge, audio, transcript)
        except Exception:
            log.exception("session %s: the turn judge failed; the silence limit decides this turn", self.id[:8])
            return
        wait = max(self.settings.turn.quiet_s, verdict.wait_s)
        if (
            self._hold is not None
            and transcript is not None
            and self._passes(transcript, self.recorder.speech_s) == "a backchannel"
        ):
            wait = self.settings.turn.quiet_s  # "Yes." over a held answer: resume soon, whatever it reads like
        event = self.recorder.limit_pause(paused_at, wait)
        log.info(
            "session %s: pause judged in %.0f ms (reads %s, sounds %s): over after %.1f s of silence",
            self.id[:8], 1000 * (self._clock() - began), _p(verdict.text), _p(verdict.sound), wait,
        )  # fmt: skip
        if event is not None:
            self._on_turn_event(event)

    # -- speech over an answer ---------------------------------------------------------------

    def _hold_answer(self) -> None:
        """The user speaks over the answer: stop its audio now, and weigh what they say."""
        hold = self._hold
        if hold is None:
            hold = self._hold = Hold(utterance=self._utterance)
            self._spawn(self._hold_limit(hold))
        elif hold.held:
            return
        hold.held = True
        if self.track is not None:
            self.track.hold()
        canceller = self.recorder.canceller
        echo = "" if canceller is None else f" (echo canceller: {_db(canceller.removed_db)} removed lately)"
        log.info("session %s: speech over the answer; it holds%s", self.id[:8], echo)
        if self._answering is not None:
            self._spawn(self.emit("state", {"id": self._answering.id, "state": "paused"}))

    async def _hold_limit(self, hold: Hold) -> None:
        """A hold still holding after HOLD_LIMIT_S (its transcript never came) interrupts."""
        await asyncio.sleep(HOLD_LIMIT_S)
        if hold.held:
            await self._settle(hold, goes_on=False, why=f"not settled within {HOLD_LIMIT_S:g} s")

    def _release_hold(self, hold: Hold, why: str) -> None:
        """At a pause, what was heard was no speech of the user's (no words, or the answer's own):
        play on from where it stopped, at once. The hold stays open until the utterance ends:
        speech coming back holds again."""
        if self._hold is not hold or not hold.held:
            return
        hold.held = False
        if self.track is not None:
            self.track.resume(rewind=False)
        log.info("session %s: %s; the answer plays on", self.id[:8], why)
        self._spawn(self._show_answer_state())

    async def _show_answer_state(self) -> None:
        answer = self._answering
        if answer is not None and self.busy:
            await self.emit("state", {"id": answer.id, "state": answer.state})
        if self.busy:
            self._set_state("speaking")

    def _passes(self, words: str, speech_s: float) -> str | None:
        """Why speech over the answer lets it go on ("a backchannel", "its own voice"), or None."""
        if is_backchannel(words, speech_s, self.settings.language):
            return "a backchannel" if words_of(words) else "no words"
        reply = self._reply
        if reply is not None and is_own_words(words, reply.spoken_since(self._clock() - ECHO_MEMORY_S)):
            return "its own voice"
        return None

    async def _heard_at_pause(self, utterance: Utterance, words: str) -> bool:
        """The transcript of a held utterance up to a pause: True if it can make no turn (yet).
        Words that are no backchannel interrupt at once; no words, or the answer's own, play on
        now; a backchannel waits for the end of the utterance ("okay... so what about X" is no
        backchannel), unanswered."""
        hold = self._hold
        if hold is None or hold.utterance is not utterance:
            return False
        speech_s = self.recorder.speech_s
        why = self._passes(words, speech_s)
        if why is None:
            await self._settle(hold, goes_on=False, why=f"{speech_s:.2f} s reading {words!r}")
            return False
        if why == "its own voice":
            self._release_hold(hold, f"{why}: {speech_s:.2f} s reading {words!r}")
        elif why == "no words":
            # Maybe the first syllable of more ("wait, ... stop"): only a pause that goes on lets it play.
            paused_at = self.recorder.paused_at

            async def later() -> None:
                await asyncio.sleep(NO_WORDS_GRACE_S)
                if self.recorder.paused_at == paused_at and paused_at is not None:
                    self._release_hold(hold, f"{why}: {speech_s:.2f} s reading {words!r}")

            self._spawn(later())
        return True

    async def _weigh(self, hold: Hold, words: str | None, speech_s: float) -> bool:
        """The held utterance ended: settle by what was said (None: the transcript failed); True if
        the answer goes on."""
        why = None if words is None else self._passes(words, speech_s)
        await self._settle(hold, why is not None, why=f"{why or 'speech'}: {speech_s:.2f} s reading {words!r}")
        return why is not None

    async def _settle(self, hold: Hold, goes_on: bool, why: str) -> None:
        """Resume the held answer (a backchannel, no words, its own voice: no turn; from the start of
        its sentence if it was still holding) or interrupt it (the speech is the turn)."""
        if self._hold is not hold:
            return  # settled already, or the answer ended
        self._hold = None
        if not goes_on:
            log.info("session %s: barge-in (%s)", self.id[:8], why)
            await self.interrupt(keep_utterance=True)
            return
        log.info("session %s: %s; the answer goes on", self.id[:8], why)
        if hold.utterance is not None and self._utterance is hold.utterance:
            self._utterance = None
            self.recorder.drop_utterance()
            await hold.utterance.drop()
        if hold.held and self.track is not None:
            self.track.resume(rewind=True)
        await self._show_answer_state()
        if not self.busy:
            self._set_state(self._resting())

    # -- user actions -----------------------------------------------------------------------

    async def set_hands_free(self, on: bool) -> None:
        """Switch between push-to-talk and hands-free."""
        if on == self.recorder.hands_free:
            return
        await self._drop_utterance()
        self.recorder.set_hands_free(on)
        if not self.busy:
            self._set_state(self._resting())

    async def talk_start(self) -> None:
        """The talk key went down: interrupt any answer and start recording."""
        await self.interrupt()
        await self._drop_utterance()
        if self.preroll_source is not None and not self.recorder.listening:
            self.recorder.preload(self.preroll_source(), 48000)
        clock = self.sender_clock
        self._arrived_at_press = (clock.arrived_to() if clock is not None else None) or 0
        event = self.recorder.press()
        self._begin_utterance(event.sample)
        await self.emit("recording", {"active": True})

    async def talk_end(self, reason: str | None = None) -> None:
        """The talk key came up: what was said becomes a turn. The user waits from here: any wait
        for late microphone audio is part of the turn's `turn_to_voice`."""
        released = self._clock()
        press = self.recorder.presses
        clock = self.sender_clock
        if clock is not None and self.recorder.listening and self.recorder.heard_rate in (0, clock.rate):
            await clock.catch_up(self._heard_to, limit_s=RELEASE_WAIT_S, who=f"session {self.id[:8]}")
        if self.recorder.presses != press:
            return  # pressed again while waiting: that press dropped this utterance
        event = self.recorder.release(tail_s=RELEASE_TAIL_S)
        if event is None:
            return
        await self._end_utterance(event, TurnTimes(decided=released))

    def _heard_to(self) -> int:
        """Where the microphone audio on the tape ends, in the sender's timestamps; before the first
        frame since the press, where the audio that had arrived by the press ended."""
        heard = self.recorder.heard_to
        return self._arrived_at_press if heard is None else heard

    async def send_text(self, text: Any) -> bool:
        """A typed message goes through the same pipeline, without ASR; False if it was refused (the
        page was told why)."""
        if not isinstance(text, str):
            await self.notice("That message was not text.", "error")
            return False
        text = text.strip()
        if not text:
            return False
        limit = self.settings.limits.max_text_chars
        if len(text) > limit:
            await self.notice(f"Messages are limited to {limit} characters; yours has {len(text)}.", "error")
            return False
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            await self.notice("That message holds characters that are not valid text (UTF-8); it was not sent.", "error")
            return False
        if estimate_tokens(text) > self.conversation.prompt_budget_tokens():
            await self.notice("That message is too long for the language model; please shorten it.", "error")
            return False
        await self.interrupt()
        if not self._allow_turn():
            await self.notice("Too many turns in a minute; wait a moment and try again.", "warn")
            return False
        frame, sent = self.latest_frame, self._clock()

        async def typed() -> None:
            user = Entry(role="user", text=text, image=await self._image(frame))
            await self._answer(user, self._reply_to(user), TurnTimes(decided=sent), asr_s=None)

        self._start_turn(typed)
        return True

    async def interrupt(self, *, keep_utterance: bool = False) -> None:
        """Stop the answer now: cancel the turn and drop queued speech."""
        self._hold = None
        if self.track is not None:
            self.track.clear()
        turn, self._turn = self._turn, None
        if turn is not None and not turn.done():
            turn.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await turn
        if not keep_utterance and not self.recorder.hands_free:
            self._set_state(self._resting())

    async def forget(self) -> None:
        """A new conversation: stop what is going on and forget the history, here and in the store."""
        await self._drop_utterance()
        await self.interrupt()
        self.conversation.clear()
        self._set_state(self._resting())
        log.info("session %s: the user started a new conversation; the old one is forgotten", self.id[:8])

    async def close(self) -> None:
        await self._drop_utterance()
        await self.interrupt()

    def _allow_turn(self) -> bool:
        now = self._clock()
        while self._turn_times and now - self._turn_times[0] > 60:
            self._turn_times.popleft()
        if len(self._turn_times) >= self.settings.limits.turns_per_minute:
            return False
        self._turn_times.append(now)
        return True

    # -- an utterance, from its start to its turn ---------------------------------------------

    def _begin_utterance(self, start: int) -> None:
        if self._utterance is not None:
            self._spawn(self._utterance.drop())
        self._utterance = Utterance(
            start=start,
            frame=self.latest_frame,
            transcribe=self.services.transcribe,
            audio=self.recorder.audio,
            segment_s=self.settings.turn.segment_s,
            clock=self._clock,
        )
        self._set_state("hearing")

    async def _drop_utterance(self) -> None:
        utterance, self._utterance = self._utterance, None
        if utterance is not None:
            await utterance.drop()

    def _speculate(self, utterance: Utterance, until: int) -> None:
        """A pause: transcribe what was said so far and start answering it, held back."""
        if utterance.speculation is not None:
            self._spawn(utterance.speculation.cancel())
        text = utterance.text_until(until)

        async def work() -> tuple[str, Reply | None]:
            words = await text
            if await self._heard_at_pause(utterance, words):
                return words, None
            if not words:
                return words, None
            user = Entry(role="user", text=words, image=await self._image(utterance.frame))
            return words, self._reply_to(user)

        task = asyncio.get_running_loop().create_task(work())
        utterance.speculation = Speculation(until=until, task=task, transcript=text, began=self._clock())

    async def _end_utterance(self, event: TurnEvent, times: TurnTimes) -> None:
        """The recorder says the utterance is over: it becomes a turn, or (too little speech) nothing."""
        utterance, self._utterance = self._utterance, None
        if not self.recorder.hands_free:
            await self.emit("recording", {"active": False, **({"reason": event.reason} if event.reason else {})})
        if utterance is None:
            return
        hold = self._hold
        if hold is not None and hold.utterance is utterance:
            # Read even when the VAD let little of it count as speech: over Parley's own voice the
            # gates keep much of the user's speech from counting, and "stop" stops it all the same.
            if await self._weigh(hold, await self._words_or_none(utterance, event.sample), event.speech_s):
                await utterance.drop()
                return
        if event.speech_s < self.settings.turn.min_speech_s:
            await utterance.drop()
            log.info("session %s: %.2f s of speech is not a turn", self.id[:8], event.speech_s)
            if not self.recorder.hands_free:
                await self.notice("I didn't hear any speech. Hold Space (or the talk button) while you speak.", "warn")
            if not self.busy:
                self._set_state(self._resting())
            return
        if not self._allow_turn():
            await utterance.drop()
            await self.notice("Too many turns in a minute; wait a moment and try again.", "warn")
            return
        if not self.recorder.hands_free and event.sample >= self.recorder.tape.end:
            await asyncio.sleep(RELEASE_TAIL_S)  # speech went on to the release: take the audio still arriving
            event = TurnEvent("end", self.recorder.tape.end, speech_s=event.speech_s)
        await self.interrupt(keep_utterance=True)
        self._start_turn(lambda: self._spoken_turn(utterance, event.sample, times))

    async def _words_or_none(self, utterance: Utterance, end: int) -> str | None:
        """The transcript of the utterance up to `end` (the speculation's, if it reached there);
        None if it could not be made."""
        speculation = utterance.speculation
        try:
            if speculation is not None and speculation.until >= end:
                return await asyncio.shield(speculation.transcript)
            return await utterance.text_until(end)
        except asyncio.CancelledError:
            raise
        except Exception:
            return None

    async def _spoken_turn(self, utterance: Utterance, end: int, times: TurnTimes) -> None:
        self._set_state("thinking")
        speculation = utterance.speculation
        try:
            async with asyncio.timeout(self.settings.limits.turn_timeout_s):
                if speculation is not None and speculation.until >= end:
                    times = replace(times, head_start=max(0.0, times.decided - speculation.began))
                    words, reply = await speculation.task
                else:
                    if speculation is not None:
                        await speculation.cancel()
                    words, reply = await utterance.text_until(end), None
        except TimeoutError:
            await utterance.drop()
            self._meter.error("asr")
            limit = self.settings.limits.turn_timeout_s
            await self.notice(f"Speech recognition took longer than {limit:g} seconds; please try again.", "error")
            return
        except Exception as exc:
            log.exception("session %s: ASR failed", self.id[:8])
            self._meter.error("asr")
            await self.notice(f"Speech recognition failed: {_sentence(_reason(exc))} Please try again.", "error")
            return
        if not words:
            if reply is not None:
                await reply.stop()
            log.info("session %s: no words in the recording", self.id[:8])
            if not self.recorder.hands_free:
                await self.notice("I couldn't make out any words in that recording.", "warn")
            self._set_state(self._resting())
            return
        user = Entry(role="user", text=words, image=await self._image(utterance.frame))
        if reply is None:
            reply = self._reply_to(user)
        await self._answer(user, reply, times, asr_s=utterance.asr_s)

    # -- the answer ---------------------------------------------------------------------------

    def _reply_to(self, user: Entry) -> Reply:
        messages = self.conversation.messages(vision=self.vision, then=user)
        return Reply(
            uuid.uuid4().hex[:12],
            messages,
            self.services,
            voice=self.settings.voice,
            user=self.user,
            first_clause_words=self.settings.turn.first_clause_words if self.track is not None else None,
            clock=self._clock,
        ).start()

    async def _image(self, frame: av.VideoFrame | None) -> str | None:
        if frame is None or not self.vision:
            return None
        return await asyncio.to_thread(frame_to_data_url, frame)

    def _start_turn(self, work: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            self._meter.turn()
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session %s: turn failed", self.id[:8])
                await self.notice("Something went wrong with that turn; please try again.", "error")
            finally:
                if self._utterance is None or not self.recorder.speaking:
                    self._set_state(self._resting())

        self._turn = asyncio.get_running_loop().create_task(run())

    async def _answer(self, user: Entry, reply: Reply, times: TurnTimes, *, asr_s: float | None) -> None:
        """Show the user's words, then make the reply live and see it through (or its interruption)."""
        self.conversation.add(user)
        await self.emit("message", user.public())
        answer = self.conversation.add(Entry(role="assistant", text="", state="streaming"))
        self._answering, self._reply = answer, reply
        await self.emit("message", answer.public())
        metrics = reply.metrics
        metrics.asr = asr_s
        metrics.head_start = times.head_start
        if times.spoke_until is not None:
            metrics.end_of_turn = times.decided - times.spoke_until
        track = self.track

        def first_audio() -> None:
            now = self._clock()
            metrics.voice_to_voice = now - times.anchor
            metrics.turn_to_voice = now - times.decided
            self._set_state("speaking")

        def playing(tag: Hashable) -> None:
            if isinstance(tag, tuple) and len(tag) == 2 and tag[0] == reply.id:
                start, end = reply.span(tag[1])
                self._spawn(self.emit("speaking", {"id": answer.id, "sentence": tag[1], "start": start, "end": end}))

        if track is not None:
            track.on_first_audio = first_audio
            track.on_tag = playing

        async def publish(kind: str, text: str) -> None:
            if kind == "delta":
                await self.emit("delta", {"id": answer.id, "text": text})
            else:
                self._meter.error("tts")
                await self.notice(f"Part of the answer could not be spoken: {_sentence(_reason(text))}", "error")

        reply.commit(track, publish)
        try:
            limit = self.settings.limits.turn_timeout_s
            try:
                left = max(0.0, times.decided + limit - self._clock())
                async with asyncio.timeout_at(asyncio.get_running_loop().time() + left):
                    await reply.text_finished()
            except TimeoutError:
                raise TurnTimeout(f"The answer took longer than {limit:g} seconds and was stopped. Please try again.") from None
            answer.text, answer.state = reply.text, "done"
            answer.cut = reply.finish is not None and reply.finish.cut
            self.conversation.save(answer)
            await self.emit("state", {"id": answer.id, "state": "done", **({"cut": True} if answer.cut else {})})
            await reply.played()
            if track is not None:
                await self.emit("speaking", {"id": answer.id, "sentence": None})
            await self.emit("metrics", {"id": answer.id, **metrics.model_dump()})
        except asyncio.CancelledError:
            await self._interrupted(answer, reply)
            raise
        except Exception as exc:
            log.exception("session %s: LLM failed", self.id[:8])
            self._meter.error("llm")
            answer.text, answer.state = reply.text, "error"
            self.conversation.save(answer)
            await reply.stop()
            await self.emit("state", {"id": answer.id, "state": "error", "error": _reason(exc)})
        finally:
            self._report(metrics)
            if self._answering is answer:
                self._answering = self._reply = None
                self._hold = None
            if track is not None and track.on_first_audio is first_audio:
                track.on_first_audio = None
            if track is not None and track.on_tag is playing:
                track.on_tag = None

    async def _interrupted(self, answer: Entry, reply: Reply) -> None:
        """Keep in the history only what the user heard; show the rest apart."""
        if self.track is not None:
            self.track.clear()
        answer.text, answer.unspoken = reply.heard()
        answer.state = "interrupted"
        self.conversation.save(answer)
        log.info("session %s: interrupted after %d heard words", self.id[:8], len(answer.text.split()))
        await self.emit(
            "state",
            {
                "id": answer.id,
                "state": "interrupted",
                "text": answer.text,
                "unspoken": answer.unspoken,
                **({"cut": True} if answer.cut else {}),
            },
        )
        await reply.stop()

    def _report(self, metrics: TurnMetrics) -> None:
        for stage in STAGES:
            value = getattr(metrics, stage)
            if value is not None:
                self._meter.stage(stage, value)


class TurnTimeout(RuntimeError):
    """A turn ran past limits.turn_timeout_s; the message is for the page."""


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} dB"


def _p(probability: float | None) -> str:
    return "-" if probability is None else f"{probability:.2f}"


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _reason(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
