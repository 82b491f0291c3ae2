"""A session's ear: microphone frames in, typed speech events out.

The recorder marks speech on the tape; the ear turns its marks into events for the coordinator
(`parley.engine.events`: speech started, lasted, paused, resumed, ended), judges pauses
(hands-free, with the turn judge) and waits for the audio a release still needs. It reports only
by posting events; it knows nothing of turns, answers or the page.

Invariants:
- The assistant's own voice coming back through the microphone is not the user: the echo
  canceller removes what the output sent from the microphone audio before anything hears it, and,
  as a second line, while it plays the microphone counts as speech only when it is louder than
  what was played, less a margin (`not_echo`).
- A release waits only for microphone audio that is on its way (`SenderClock.catch_up`), at most
  `RELEASE_WAIT_S`; the user waits from the release.
- A judged pause is reported as `PauseJudged`; the coordinator applies it (`limit_pause`) only if the
  pause is still going on then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import av
import numpy as np

from media.echo import EchoCanceller
from media.vad import RATE
from parley.engine.clock import Clock
from parley.engine.events import PauseJudged, Post, SpeechEnded, SpeechLasted, SpeechPaused, SpeechResumed, SpeechStarted
from parley.engine.metrics import TurnTimes
from parley.engine.overlap import Overheard
from parley.engine.ports import SenderClock, rtp_diff
from parley.engine.recorder import Recorder, SpeechMark
from parley.engine.services import Services
from parley.engine.settings import SessionSettings
from parley.engine.turnmodel import SOUND_TAIL, TurnJudge

log = logging.getLogger("parley.session")

RELEASE_TAIL_S = 0.1
"""Audio still taken after the key comes up while speech was going on: RTP lags the socket.io event."""

THOUGHT_PAUSE_S = 0.5
"""Hands-free: speech coming back after a pause this long means the user took a thinking pause
and went on; a later pause in the same utterance then waits at most `unsure_silence_s`."""

RELEASE_WAIT_S = 2.0
"""At most this long, a release waits for the microphone audio the browser had sent by then
(a busy server decodes it late): a turn is never cut short for the server's own delay."""

PlayedLevel = Callable[[float], float | None]
"""The loudest level of Parley's own voice within the last `window_s` (None: no output connected)."""


class Ear:
    """One session's microphone, from audio frames to speech events."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        post: Post,
        clock: Clock,
        played_level: PlayedLevel,
        canceller: EchoCanceller | None,
        judge: TurnJudge | None,
        who: str,
    ) -> None:
        self._settings = settings
        self._post = post
        self._clock = clock
        self._played_level = played_level
        self._who = who
        self.judge = judge
        """Hands-free: judges at a pause how much silence ends the turn (None: the silence rule)."""
        turn = settings.turn
        self.recorder = Recorder(
            turn,
            max_record_s=settings.limits.max_record_s,
            end_silence_s=turn.end_of_turn.max_silence_s if judge is not None else None,
            clock=clock,
            canceller=canceller,
            gate=self.not_echo,
        )
        self.sender_clock: SenderClock | None = None
        """Where the browser's microphone stream is now (RTP timestamps), from its packets' arrivals."""
        self.preroll: Callable[[], np.ndarray] | None = None
        """The microphone audio kept (undecoded) while nobody listened, decoded: 48 kHz mono float."""
        self._arrived_at_press = 0
        """The sender's timestamp where the audio that had arrived at the latest press ended."""

    @property
    def hands_free(self) -> bool:
        return self.recorder.hands_free

    # -- audio in ---------------------------------------------------------------------------

    def feed(self, frame: av.AudioFrame) -> None:
        for mark in self.recorder.feed(frame):
            self._report(mark)

    def tick(self) -> None:
        """An utterance whose audio stopped arriving still pauses and ends."""
        if self.recorder.started_at is not None:
            for mark in self.recorder.fill_silence(self._sender_stopped):
                self._report(mark)

    def _sender_stopped(self) -> bool:
        """The browser has stopped sending microphone audio (a microphone that sends nothing while
        quiet), and every packet it sent is on the tape: nothing more is on its way."""
        recorder = self.recorder
        clock, heard = self.sender_clock, recorder.heard_to
        if clock is None or clock.sending() or recorder.heard_rate not in (0, clock.rate):
            return False
        arrived = clock.arrived_to()
        return arrived is None or heard is None or rtp_diff(arrived, heard) <= 0

    def not_echo(self, level: float) -> bool:
        """Whether a microphone window this loud can be the user while Parley itself speaks."""
        echo = self._settings.turn.echo
        played = self._played_level(echo.window_s)
        if played is None:
            return True
        if played > 0 and level < played * 10 ** (-echo.margin_db / 20):
            return False
        canceller = self.recorder.canceller
        return canceller is None or not canceller.echo_like()

    def _report(self, mark: SpeechMark) -> None:
        recorder = self.recorder
        if mark.kind == "start":
            if recorder.hands_free:
                self._post(SpeechStarted(mark.sample))
        elif mark.kind == "speech":
            self._post(SpeechLasted())
        elif mark.kind == "pause":
            self._post(SpeechPaused(mark.sample))
        elif mark.kind == "resume":
            gaps = recorder.gaps
            thought = bool(gaps) and gaps[-1][1] == mark.sample and (gaps[-1][1] - gaps[-1][0]) / RATE >= THOUGHT_PAUSE_S
            self._post(SpeechResumed(mark.sample, thought=thought))
        elif mark.kind == "end":
            now = self._clock()
            self._post(SpeechEnded(mark, TurnTimes(decided=now, spoke_until=min(now, recorder.wall_time(mark.sample)))))

    def limit_pause(self, paused_at: int, wait_s: float) -> None:
        """The pause at `paused_at` ends the utterance after `wait_s` of silence (now, if it has lasted that long)."""
        mark = self.recorder.limit_pause(paused_at, wait_s)
        if mark is not None:
            self._report(mark)

    # -- push-to-talk -----------------------------------------------------------------------

    def press(self) -> SpeechMark:
        """The talk key went down: an utterance starts (with the audio kept from just before)."""
        if self.preroll is not None and not self.recorder.wants_audio:
            self.recorder.preload(self.preroll(), 48000)
        clock = self.sender_clock
        self._arrived_at_press = (clock.arrived_to() if clock is not None else None) or 0
        return self.recorder.press()

    async def release(self) -> SpeechEnded | None:
        """The talk key came up: the utterance ends, once the audio the browser had sent by now is
        on the tape. None if it was no utterance, or the key went down again meanwhile. The user
        waits from here: any wait for late audio is part of the turn's `turn_to_voice`."""
        recorder = self.recorder
        released = self._clock()
        press = recorder.presses
        clock = self.sender_clock
        if clock is not None and recorder.wants_audio and recorder.heard_rate in (0, clock.rate):
            await clock.catch_up(self._heard_to, limit_s=RELEASE_WAIT_S, who=self._who)
        if recorder.presses != press:
            return None  # pressed again while waiting: that press dropped this utterance
        mark = recorder.release(tail_s=RELEASE_TAIL_S)
        return None if mark is None else SpeechEnded(mark, TurnTimes(decided=released))

    def _heard_to(self) -> int:
        """Where the microphone audio on the tape ends, in the sender's timestamps; before the first
        frame since the press, where the audio that had arrived by the press ended."""
        heard = self.recorder.heard_to
        return self._arrived_at_press if heard is None else heard

    async def tail(self, mark: SpeechMark) -> SpeechMark:
        """Push-to-talk: speech that went on to the release takes the audio still arriving
        (`RELEASE_TAIL_S`); the end moves to the tape's end."""
        recorder = self.recorder
        if recorder.hands_free or mark.sample < recorder.tape.end:
            return mark
        await self._clock.sleep(RELEASE_TAIL_S)
        return SpeechMark("end", recorder.tape.end, speech_s=mark.speech_s)

    # -- reading the speech -----------------------------------------------------------------

    async def read_so_far(self, services: Services) -> Overheard | None:
        """The speech of the utterance going on, read so far (a hold's peek); None when no speech goes on."""
        recorder = self.recorder
        start = recorder.started_at
        if start is None or not recorder.speaking:
            return None
        heard = await services.transcribe(recorder.speech_audio(start, recorder.tape.end))
        return Overheard(
            "peek",
            recorder.speech_s,
            words=heard.text,
            guessing=heard.guessing,
            language=self._settings.language,
        )

    async def judge_pause(
        self,
        paused_at: int,
        transcript: asyncio.Task[str] | None,
        *,
        thought: bool,
        lets_answer_on: Callable[[str], str | None] = lambda words: None,
    ) -> None:
        """Hands-free: speech has paused. The turn judge reads the transcript made at this pause and,
        if that does not decide, hears the speech up to the pause; it says how much silence ends the
        turn: `quiet_s` (it is over), a little more, or a lot (a thinking pause). Reported as
        `PauseJudged`; speech coming back makes the verdict moot. Words that let a held answer go on
        (`lets_answer_on`: "Yes." over it) end the utterance after `quiet_s`, unjudged."""
        judge, recorder = self.judge, self.recorder
        start = recorder.started_at
        if judge is None or start is None:
            return
        end = paused_at + SOUND_TAIL
        # the last 8 s of speech, earlier thinking pauses cut down as the ASR hears them (16 s of tape
        # hold that unless the pauses in them took more than 8 s)
        audio = recorder.speech_audio(max(start, end - 16 * RATE), end)[-8 * RATE :]
        words = None
        if transcript is not None:
            try:
                words = await asyncio.shield(transcript)
            except asyncio.CancelledError:
                if not transcript.cancelled():
                    raise
                return  # speech came back: this pause is over
            except Exception:
                words = None  # ASR failed: the turn itself will say so; judge by the sound
        if recorder.paused_at != paused_at:
            return
        silence = self._settings.turn.end_of_turn
        why = lets_answer_on(words) if words else None
        if why is not None:  # "Yes." over a held answer: resume soon, whatever the judge would make of it
            log.info("%s: %s over the answer; over after %.1f s of silence", self._who, why, silence.quiet_s)
            self._post(PauseJudged(paused_at, silence.quiet_s))
            return
        began = self._clock()
        try:
            verdict = await asyncio.to_thread(judge.judge, audio, words)
        except Exception:
            log.exception("%s: the turn judge failed; the silence limit decides this turn", self._who)
            return
        wait = max(silence.quiet_s, verdict.wait_s)
        if thought:
            # The user paused to think and went on: the turn most likely ends at this pause, so it
            # waits no longer than an unsure one ("What is the capital of ... Italy?" waited 2 s more).
            wait = min(wait, silence.unsure_silence_s)
        log.info(
            "%s: pause judged in %.0f ms (reads %s, sounds %s): over after %.1f s of silence",
            self._who, 1000 * (self._clock() - began), _p(verdict.text), _p(verdict.sound), wait,
        )  # fmt: skip
        self._post(PauseJudged(paused_at, wait))


def _p(probability: float | None) -> str:
    return "-" if probability is None else f"{probability:.2f}"
