"""A session's ear: from microphone audio to a turn.

The recorder marks speech on the tape; here its events become an utterance (transcribed in pieces,
an answer started early at a pause), a judged pause, and at the end a turn for the session to
answer, or nothing.

Invariants:
- Work may start before a turn is over (at a pause in speech: the transcript and the answer), but
  nothing of it is shown or spoken until the turn is confirmed: the key released (push-to-talk),
  or the silence the turn judge gave the pause (`end_silence_s` without a judge) in hands-free.
  Speech resuming cancels it.
- The assistant's own voice coming back through the microphone is not the user: the echo
  canceller removes what the output sent from the microphone audio before anything hears it, and,
  as a second line, while it plays the microphone counts as speech only when it is louder than
  what was played, less a margin.
- A release waits only for microphone audio that is on its way (`SenderClock.catch_up`), at most
  `RELEASE_WAIT_S`; the user waits from the release.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import av
import numpy as np

from media.vad import RATE
from parley.engine.answer import TurnTimes, reason, sentence
from parley.engine.ports import SenderClock, rtp_diff
from parley.engine.recorder import TurnEvent
from parley.engine.reply import GENERIC_ERRORS, Reply
from parley.engine.turnmodel import SOUND_TAIL
from parley.engine.utterance import Speculation, Utterance
from parley.protocol import Recording

if TYPE_CHECKING:
    from parley.engine.session import Session

log = logging.getLogger("parley.session")

RELEASE_TAIL_S = 0.1
"""Audio still taken after the key comes up while speech was going on: RTP lags the socket.io event."""

THOUGHT_PAUSE_S = 0.5
"""Hands-free: speech coming back after a pause this long means the user took a thinking pause
and went on; a later pause in the same utterance then waits at most `unsure_silence_s`."""

RELEASE_WAIT_S = 2.0
"""At most this long, a release waits for the microphone audio the browser had sent by then
(a busy server decodes it late): a turn is never cut short for the server's own delay."""


class Listener:
    """One session's microphone, from audio frames to turns."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.utterance: Utterance | None = None
        """What is being said now (None between utterances)."""
        self.sender_clock: SenderClock | None = None
        """Where the browser's microphone stream is now (RTP timestamps), from its packets' arrivals."""
        self.preroll: Callable[[], np.ndarray] | None = None
        """The microphone audio kept (undecoded) while nobody listened, decoded: 48 kHz mono float."""
        self._arrived_at_press = 0
        """The sender's timestamp where the audio that had arrived at the latest press ended."""

    # -- audio in ---------------------------------------------------------------------------

    def on_audio_frame(self, frame: av.AudioFrame) -> None:
        s = self._session
        for event in s.recorder.feed(frame):
            self.on_turn_event(event)
        s.overlap.too_long(s.recorder.speech_s)

    def tick(self) -> None:
        for event in self._session.recorder.fill_silence(self._sender_stopped):
            self.on_turn_event(event)

    def _sender_stopped(self) -> bool:
        """The browser has stopped sending microphone audio (a microphone that sends nothing while
        quiet), and every packet it sent is on the tape: nothing more is on its way."""
        recorder = self._session.recorder
        clock, heard = self.sender_clock, recorder.heard_to
        if clock is None or clock.sending() or recorder.heard_rate not in (0, clock.rate):
            return False
        arrived = clock.arrived_to()
        return arrived is None or heard is None or rtp_diff(arrived, heard) <= 0

    def not_echo(self, level: float) -> bool:
        """Whether a microphone window this loud can be the user while Parley itself speaks."""
        s = self._session
        output = s.output
        if output is None:
            return True
        played = output.recent_level(s.settings.turn.echo_window_s)
        if played > 0 and level < played * 10 ** (-s.settings.turn.echo_margin_db / 20):
            return False
        canceller = s.recorder.canceller
        return canceller is None or not canceller.echo_like()

    def on_turn_event(self, event: TurnEvent) -> None:
        s = self._session
        turn, recorder = s.settings.turn, s.recorder
        if event.kind == "start":
            if recorder.hands_free:
                self.begin(event.sample)
        elif event.kind == "speech":
            if recorder.hands_free and turn.barge_in and s.busy:
                if turn.backchannels:
                    s.overlap.start(self.utterance)
                else:
                    log.info("session %s: barge-in", s.id[:8])
                    s.spawn(s.interrupt(keep_utterance=True))
        elif event.kind == "pause":
            if turn.speculate and self.utterance is not None:
                self._speculate(self.utterance, event.sample)
            if s.turn_judge is not None and recorder.hands_free and self.utterance is not None:
                s.spawn(self._judge(event.sample))
        elif event.kind == "resume":
            if s.overlap.holds(self.utterance):
                s.overlap.start(self.utterance)  # speech again after a pause that let the answer play on
            s.set_state("hearing")
            if self.utterance is not None:
                gaps = s.recorder.gaps
                if gaps and gaps[-1][1] == event.sample and (gaps[-1][1] - gaps[-1][0]) / RATE >= THOUGHT_PAUSE_S:
                    self.utterance.thought = True
                self.utterance.resumed(event.sample)  # first: a piece kept now survives the cancel
                if self.utterance.speculation is not None:
                    s.spawn(self.utterance.speculation.cancel())
                    self.utterance.speculation = None
        elif event.kind == "end":
            now = s.clock()
            spoke_until = min(now, recorder.wall_time(event.sample))
            s.spawn(self._end(event, TurnTimes(decided=now, spoke_until=spoke_until)))

    async def _judge(self, paused_at: int) -> None:
        """Hands-free: speech has paused. The turn judge reads the transcript made at this pause
        (the speculation's) and, if that does not decide, hears the speech up to the pause; it says
        how much silence ends the turn: `quiet_s` (it is over), a little more, or a lot (a thinking
        pause). Speech coming back makes the verdict moot."""
        s = self._session
        judge, utterance, start = s.turn_judge, self.utterance, s.recorder.utterance
        if judge is None or utterance is None or start is None:
            return
        end = paused_at + SOUND_TAIL
        # the last 8 s of speech, earlier thinking pauses cut down as the ASR hears them (16 s of tape
        # hold that unless the pauses in them took more than 8 s)
        audio = s.recorder.speech_audio(max(start, end - 16 * RATE), end)[-8 * RATE :]
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
        if s.recorder.paused_at != paused_at:
            return
        overlap = s.overlap
        if overlap.hold is not None and transcript:
            why = overlap.passes(transcript, s.recorder.speech_s, utterance.guessing(transcript))
            if why is not None:  # "Yes." over a held answer: resume soon, whatever the judge would make of it
                log.info("session %s: %s over the answer; over after %.1f s of silence", s.id[:8], why, s.settings.turn.quiet_s)
                event = s.recorder.limit_pause(paused_at, s.settings.turn.quiet_s)
                if event is not None:
                    self.on_turn_event(event)
                return
        began = s.clock()
        try:
            verdict = await asyncio.to_thread(judge.judge, audio, transcript)
        except Exception:
            log.exception("session %s: the turn judge failed; the silence limit decides this turn", s.id[:8])
            return
        turn = s.settings.turn
        wait = max(turn.quiet_s, verdict.wait_s)
        if utterance.thought:
            # The user paused to think and went on: the turn most likely ends at this pause, so it
            # waits no longer than an unsure one ("What is the capital of ... Italy?" waited 2 s more).
            wait = min(wait, turn.unsure_silence_s)
        event = s.recorder.limit_pause(paused_at, wait)
        log.info(
            "session %s: pause judged in %.0f ms (reads %s, sounds %s): over after %.1f s of silence",
            s.id[:8], 1000 * (s.clock() - began), _p(verdict.text), _p(verdict.sound), wait,
        )  # fmt: skip
        if event is not None:
            self.on_turn_event(event)

    # -- push-to-talk -----------------------------------------------------------------------

    async def press(self) -> None:
        """The talk key went down (the session has interrupted any answer): start recording. Each
        press takes a turn from the user's budget at once, since it starts a scene note and a
        read-ahead (a key pressed over and over would otherwise cost the models one each, free)."""
        s = self._session
        await self.drop()
        if not s.budget.take():
            log.info("session %s: a press past the turn budget", s.id[:8])
            await s.notice("Too many turns in a minute; wait a moment and try again.", "warn")
            await s.emit(Recording(active=False))
            return
        if self.preroll is not None and not s.recorder.listening:
            s.recorder.preload(self.preroll(), 48000)
        clock = self.sender_clock
        self._arrived_at_press = (clock.arrived_to() if clock is not None else None) or 0
        event = s.recorder.press()
        self.begin(event.sample, paid=True)
        await s.emit(Recording(active=True))

    async def release(self) -> None:
        """The talk key came up: what was said becomes a turn. The user waits from here: any wait
        for late microphone audio is part of the turn's `turn_to_voice`."""
        s = self._session
        released = s.clock()
        press = s.recorder.presses
        clock = self.sender_clock
        if clock is not None and s.recorder.listening and s.recorder.heard_rate in (0, clock.rate):
            await clock.catch_up(self._heard_to, limit_s=RELEASE_WAIT_S, who=f"session {s.id[:8]}")
        if s.recorder.presses != press:
            return  # pressed again while waiting: that press dropped this utterance
        event = s.recorder.release(tail_s=RELEASE_TAIL_S)
        if event is None:
            return
        await self._end(event, TurnTimes(decided=released))

    def _heard_to(self) -> int:
        """Where the microphone audio on the tape ends, in the sender's timestamps; before the first
        frame since the press, where the audio that had arrived by the press ended."""
        heard = self._session.recorder.heard_to
        return self._arrived_at_press if heard is None else heard

    # -- an utterance, from its start to its turn ---------------------------------------------

    def begin(self, start: int, *, paid: bool = False) -> None:
        """An utterance starts at `start`: its scene note starts too, unless it is speech over an
        answer. Hands-free, the note takes the turn from the budget now (and none is made when the
        budget is spent); `paid`: a key press already took it."""
        s = self._session
        if self.utterance is not None:
            s.spawn(self.utterance.drop())
        frame = s.latest_frame
        over_answer = s.busy and s.recorder.hands_free  # a backchannel, mostly: no note until it is a turn
        look = not over_answer and (paid or s.budget.take())
        self.utterance = Utterance(
            start=start,
            frame=frame,
            scene=s.look_or_say_blind(frame) if look else None,
            look_later=over_answer,
            paid=look,
            transcribe=s.services.transcribe,
            audio=s.recorder.speech_audio,
            segment_s=s.settings.turn.segment_s,
            clock=s.clock,
        )
        s.set_state("hearing")

    def look(self, utterance: Utterance | None = None) -> None:
        """Speech that began over an answer is a turn after all: make its scene note now."""
        utterance = utterance or self.utterance
        if utterance is not None and utterance.look_later:
            utterance.look_later = False
            utterance.scene = self._session.look_or_say_blind(utterance.frame)

    async def drop(self, utterance: Utterance | None = None) -> None:
        """Forget the utterance being said (only if it is `utterance`, when given), and its work."""
        current = self.utterance
        if current is None or (utterance is not None and current is not utterance):
            return
        self.utterance = None
        if utterance is not None:
            self._session.recorder.drop_utterance()
        await current.drop()

    def _speculate(self, utterance: Utterance, until: int) -> None:
        """A pause: transcribe what was said so far and start answering it, held back."""
        s = self._session
        if utterance.speculation is not None:
            s.spawn(utterance.speculation.cancel())
        text = utterance.text_until(until)

        async def work() -> tuple[str, Reply | None]:
            words = await text
            if await s.overlap.heard_at_pause(utterance, words):
                return words, None
            if not words:
                return words, None
            user = await s.user_entry(words, utterance.frame, utterance.scene)
            return words, s.reply_to(user)

        task = asyncio.get_running_loop().create_task(work())
        utterance.speculation = Speculation(until=until, task=task, transcript=text, began=s.clock())

    async def _end(self, event: TurnEvent, times: TurnTimes) -> None:
        """The recorder says the utterance is over: it becomes a turn, or (too little speech) nothing."""
        s = self._session
        recorder = s.recorder
        utterance, self.utterance = self.utterance, None
        if not recorder.hands_free:
            await s.emit(Recording(active=False, **({"reason": event.reason} if event.reason else {})))
        if utterance is None:
            return
        if s.overlap.holds(utterance):
            # Read even when the VAD let little of it count as speech: over Parley's own voice the
            # gates keep much of the user's speech from counting, and "stop" stops it all the same.
            words = await self._words_or_none(utterance, event.sample)
            if await s.overlap.weigh(words, event.speech_s, words is not None and utterance.guessing(words)):
                await utterance.drop()
                return
        if event.speech_s < s.settings.turn.min_speech_s:
            await utterance.drop()
            log.info("session %s: %.2f s of speech is not a turn", s.id[:8], event.speech_s)
            if not recorder.hands_free:
                await s.notice("I didn't hear any speech. Hold Space (or the talk button) while you speak.", "warn")
            s.rest_if_idle()
            return
        if not utterance.paid and not s.budget.take():
            await utterance.drop()
            await s.notice("Too many turns in a minute; wait a moment and try again.", "warn")
            return
        if not recorder.hands_free and event.sample >= recorder.tape.end:
            await asyncio.sleep(RELEASE_TAIL_S)  # speech went on to the release: take the audio still arriving
            event = TurnEvent("end", recorder.tape.end, speech_s=event.speech_s)
        await s.interrupt(keep_utterance=True)
        self.look(utterance)
        s.start_turn(lambda: self._spoken_turn(utterance, event.sample, times))

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
        s = self._session
        s.set_state("thinking")
        speculation = utterance.speculation
        try:
            async with asyncio.timeout(s.settings.limits.turn_timeout_s):
                if speculation is not None and speculation.until >= end:
                    times = replace(times, head_start=max(0.0, times.decided - speculation.began))
                    words, reply = await speculation.task
                else:
                    if speculation is not None:
                        await speculation.cancel()
                    words, reply = await utterance.text_until(end), None
        except TimeoutError:
            await utterance.drop()
            s.meter.error("asr")
            limit = s.settings.limits.turn_timeout_s
            await s.notice(f"Speech recognition took longer than {limit:g} seconds; please try again.", "error")
            return
        except Exception as exc:
            log.exception("session %s: ASR failed", s.id[:8])
            s.meter.error("asr")
            said = reason(exc, "asr")  # Parley's own words for it, or a plain sentence: never the backend's
            if said == GENERIC_ERRORS["asr"]:
                await s.notice(f"{said} Please try again.", "error")
            else:
                await s.notice(f"Speech recognition failed: {sentence(said)} Please try again.", "error")
            return
        if not words:
            if reply is not None:
                await reply.stop()
            log.info("session %s: no words in the recording", s.id[:8])
            if not s.recorder.hands_free:
                await s.notice("I couldn't make out any words in that recording.", "warn")
            s.set_state(s.resting())
            return
        user = await s.user_entry(words, utterance.frame, utterance.scene)
        if reply is None:
            reply = s.reply_to(user)
        await s.answer(user, reply, times, asr_s=utterance.asr_s)


def _p(probability: float | None) -> str:
    return "-" if probability is None else f"{probability:.2f}"
