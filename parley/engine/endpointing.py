"""Where speech starts, pauses and ends on the tape: the VAD per 32 ms window, and the utterance it makes.

Invariants:
- `MicState` says where listening stands, and only the transitions below change it:
  OFF: microphone audio is not wanted (push-to-talk, key up). QUIET: it is wanted (hands-free, or
  the tail a release still waits for) and no utterance is open. SPEAKING: an utterance is open
  and its speech has not paused (speech goes on, or the key is down and no pause has been heard
  yet). PAUSED: an utterance is open and its speech stopped at `paused_at`.
- Transitions (the mark each gives):
    (new)                   OFF push-to-talk, QUIET hands-free
    OFF -> QUIET            `set_hands_free(True)`
    any -> SPEAKING         `press` ("start", `PREROLL_S` before the tape's end: an utterance open
                            starts again there)
    QUIET -> SPEAKING       hands-free: speech begins ("start", `PREROLL_S` before it)
    SPEAKING -> PAUSED      speech stops ("pause")
    PAUSED -> SPEAKING      speech comes back ("resume"; the pause goes into `gaps`); so does speech
                            heard after a press (SPEAKING stays)
    SPEAKING, PAUSED -> QUIET or OFF ("end"): `release` (at the tape's end if SPEAKING, else where
                            the speech paused); hands-free and PAUSED, `end_silence_s` of silence (or,
                            at a pause the session judged, the silence it gave in `limit_pause`: at
                            the pause); the recording limit (at the window that passed it, with a
                            reason). It lands in QUIET if hands-free or a release's tail is pending.
    SPEAKING, PAUSED -> QUIET  `drop_utterance` (hands-free, key up; no mark)
    any -> QUIET or OFF     `set_hands_free` to the other mode (an utterance open is dropped, no mark)
    QUIET -> OFF            push-to-talk: the release's tail is on the tape
  `speech` fires once per utterance, in SPEAKING or PAUSED, once it has held
  `interruption.min_speech_s` of speech. `started_at` is set exactly while an utterance is open,
  `paused_at` exactly in PAUSED.
- Every 32 ms window of the tape from `origin` on goes through the VAD and the speech detector
  once, in order (`analyse`; `step` takes one window's probability and level instead), and
  `cursor` is where the next window begins. Marks carry tape positions; the clock plays no part,
  so the same audio always gives the same marks.
- The endpointer reads the tape (windows of it, its `start` and `end`) and never writes it;
  `speech_audio` gives the tape as the ASR should hear it, the long pauses in `gaps` cut down.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from media.vad import RATE, WINDOW, SileroVAD, SpeechDetector, VADSettings, rms
from parley.engine.conditioning import PREROLL_S, Tape
from parley.engine.settings import TurnSettings

GAP_KEPT_AFTER_S = 0.2
"""Of a pause inside an utterance, the speech audio keeps this much after the speech stopped (soft
word endings are quieter than the VAD's threshold)..."""
GAP_KEPT_BEFORE_S = 0.15
"""...and this much before it came back (the VAD hears a word's onset late); the rest of a longer
pause is left out of what is transcribed (`Endpointer.speech_audio`)."""

MarkKind = Literal["start", "speech", "pause", "resume", "end"]


@dataclass(frozen=True)
class SpeechMark:
    kind: MarkKind
    sample: int
    """Where on the tape: the utterance's first sample (start), speech's first or first quiet window,
    the end of speech (end; the tape's end if speech was still going on)."""
    speech_s: float = 0.0
    """end: seconds of speech the utterance held."""
    reason: str | None = None
    """end: why the recorder ended it on its own (the recording limit)."""


class MicState(enum.Enum):
    OFF = "off"
    """Microphone audio is not wanted (push-to-talk, key up)."""
    QUIET = "quiet"
    """Audio is wanted (hands-free, or a release's tail) and no utterance is open."""
    SPEAKING = "speaking"
    """An utterance is open and its speech has not paused (or, key down, no pause has been heard yet)."""
    PAUSED = "paused"
    """An utterance is open and its speech has stopped, at `paused_at`."""


OPEN = (MicState.SPEAKING, MicState.PAUSED)
"""The states in which an utterance is open."""


class Endpointer:
    """The utterances on one microphone's tape: push-to-talk (`press`/`release`) or hands-free."""

    def __init__(
        self,
        turn: TurnSettings,
        tape: Tape,
        *,
        max_record_s: float,
        end_silence_s: float,
        gate: Callable[[float], bool],
    ) -> None:
        self._tape = tape
        self._gate = gate
        """Per window: may a window this loud count as speech? (The session rejects its own echo.)"""
        self.max_record_s = max_record_s
        self.end_silence_s = end_silence_s
        """Hands-free: the silence that ends an utterance by itself (a judged pause may end it sooner)."""
        self._min_speech_s = turn.interruption.min_speech_s
        self._vad = SileroVAD()
        self._settings = VADSettings(
            threshold=turn.vad.threshold,
            end_threshold=turn.vad.end_threshold,
            pause_windows=max(1, round(turn.vad.pause_s * RATE / WINDOW)),
        )
        self._detector = SpeechDetector(self._settings)
        self.hands_free = turn.hands_free
        self.state = MicState.QUIET if turn.hands_free else MicState.OFF
        self.pressed = False
        self.presses = 0
        """How many times the talk key went down: a release that waited knows if another press came."""
        self.origin = 0
        """Tape position where the detector's first window began."""
        self.cursor = 0
        """Tape position where the next window begins."""
        self.started_at: int | None = None
        """Tape position where the open utterance began; None while none is open."""
        self.paused_at: int | None = None
        """Where the open utterance's speech paused (PAUSED); None otherwise."""
        self.gaps: list[tuple[int, int]] = []
        """(where speech paused, where it came back) for the pauses inside utterances still on the tape."""
        self._tail_until: int | None = None
        """After a release mid-speech, the tape keeps filling up to here (RTP lags the key)."""
        self._pause_limit: float | None = None
        """The silence that ends the utterance at the current pause, as the session judged it."""
        self._speech_reported = False

    @property
    def speaking(self) -> bool:
        """Speech is going on now (VAD), in an utterance."""
        return self.state is MicState.SPEAKING and self._detector.speaking

    @property
    def speech_s(self) -> float:
        """Seconds of speech in the utterance open (between utterances: since the last one)."""
        return self._detector.speech_s

    def speech_audio(self, a: int, b: int) -> np.ndarray:
        """The tape from `a` to `b` as the ASR should hear it: each pause inside an utterance cut
        down to its first `GAP_KEPT_AFTER_S` and its last `GAP_KEPT_BEFORE_S`. Whisper hears a
        thinking pause ("What is the capital of ... Italy?") as the end and drops the words after
        it, or reads them alone, without the words before, as something else."""
        after, before = round(GAP_KEPT_AFTER_S * RATE), round(GAP_KEPT_BEFORE_S * RATE)
        cuts = [(max(a, p + after), min(b, r - before)) for p, r in self.gaps if r - p > after + before]
        cuts = [(x, y) for x, y in cuts if y > x]
        if not cuts:
            return self._tape.slice(a, b)
        parts, at = [], a
        for x, y in sorted(cuts):
            parts.append(self._tape.slice(at, x))
            at = y
        parts.append(self._tape.slice(at, b))
        return np.concatenate(parts)

    # -- windows in ---------------------------------------------------------------------------

    def restart(self, origin: int) -> None:
        """The audio from tape position `origin` on follows no audio heard before it: windows start
        there, with the VAD and the detector fresh."""
        self.origin = self.cursor = origin
        self._vad.reset()
        self._detector = SpeechDetector(self._settings)

    def analyse(self) -> list[SpeechMark]:
        """Every whole window the tape holds past `cursor`, through the VAD; the marks they make."""
        marks: list[SpeechMark] = []
        while self._tape.end - self.cursor >= WINDOW:
            window = self._tape.slice(self.cursor, self.cursor + WINDOW)
            (prob,) = self._vad.feed(window)
            marks += self.step(prob, rms(window))
        if self.state is MicState.QUIET and not self.hands_free and not self._tail_pending():
            self.state = MicState.OFF
            self._tail_until = None
        return marks

    def step(self, prob: float, level: float) -> list[SpeechMark]:
        """The window at `cursor`, by its speech probability and RMS level; the marks it makes."""
        self.cursor += WINDOW
        event = self._detector.update(prob, level, allowed=self._gate(level))
        marks = [] if event is None else self._on_speech(event.kind, self.origin + round(event.at * RATE))
        return marks + self._check_time()

    def _on_speech(self, kind: str, sample: int) -> list[SpeechMark]:
        if kind == "pause":
            self._pause_limit = None
            if self.state is not MicState.SPEAKING:
                return []
            self.state, self.paused_at = MicState.PAUSED, sample
            return [SpeechMark("pause", sample)]
        if self.state is MicState.PAUSED:
            assert self.paused_at is not None
            self.gaps = [(p, r) for p, r in self.gaps if r > self._tape.start] + [(self.paused_at, sample)]
        if self.state in OPEN:
            self.state, self.paused_at = MicState.SPEAKING, None
            return [SpeechMark("resume", sample)]  # speech (again) inside an utterance: any early work is stale
        if not self.hands_free:
            return []
        self.state = MicState.SPEAKING
        self.started_at = max(self._tape.start, sample - round(PREROLL_S * RATE))
        self._speech_reported = False
        return [SpeechMark("start", self.started_at)]

    def _check_time(self) -> list[SpeechMark]:
        """Marks that depend on how long something has lasted: speech enough to barge in, the
        hands-free end of an utterance, the recording limit."""
        if self.started_at is None:
            return []
        out: list[SpeechMark] = []
        if not self._speech_reported and self._detector.speech_s >= self._min_speech_s and self._detector.heard_speech:
            self._speech_reported = True
            out.append(SpeechMark("speech", self.cursor))
        if (self.cursor - self.started_at) / RATE > self.max_record_s:
            limit = f"Recording stopped at the {self.max_record_s:g}-second limit."
            out.append(self._end(self.cursor, reason=limit))
        elif self.hands_free and not self.pressed and self.paused_at is not None:
            silent_s = (self.cursor - self.paused_at) / RATE
            if silent_s >= (self.end_silence_s if self._pause_limit is None else self._pause_limit):
                out.append(self._end(self.paused_at))
        return out

    # -- what the session decides ----------------------------------------------------------------

    def press(self) -> SpeechMark:
        """The talk key went down: an utterance starts here, with the preroll before it (the caller
        restarts the windows first if audio was not wanted)."""
        self.pressed = True
        self.presses += 1
        self._detector.reset()
        self.paused_at = None
        self._speech_reported = False
        self.state = MicState.SPEAKING
        self.started_at = max(self._tape.start, self.origin, self._tape.end - round(PREROLL_S * RATE))
        return SpeechMark("start", self.started_at)

    def release(self, tail_s: float = 0.0) -> SpeechMark | None:
        """The talk key came up: the utterance ends where its speech ended, or, if speech was still
        going on, at the tape's end; the tape then keeps filling for `tail_s` more (the audio still
        on its way), which the caller waits for."""
        if not self.pressed or self.state not in OPEN:
            self.pressed = False
            return None
        if self.state is MicState.PAUSED:
            assert self.paused_at is not None
            return self._end(self.paused_at)
        if tail_s > 0:
            self._tail_until = self._tape.end + round(tail_s * RATE)
        return self._end(self._tape.end)

    def limit_pause(self, paused_at: int, silence_s: float) -> SpeechMark | None:
        """Hands-free: the session judged the pause that began at `paused_at`: `silence_s` of it
        ends the utterance (there). Returns the end mark if the pause has lasted that long
        already; None if it has not (the endpointer ends it when it does), or if speech came back
        (or the utterance ended) since."""
        if self.state is not MicState.PAUSED or self.pressed or self.paused_at != paused_at:
            return None
        if (self.cursor - paused_at) / RATE >= silence_s:
            return self._end(paused_at)
        self._pause_limit = silence_s
        return None

    def drop_utterance(self) -> None:
        """Forget the utterance going on, with no end mark (hands-free: it was a backchannel); the
        next speech starts a new one."""
        if self.pressed:
            return
        if self.state in OPEN:
            self._close()
        self._pause_limit = None
        self._detector.reset()

    def set_hands_free(self, on: bool) -> None:
        """Switch modes; an utterance open is dropped (its audio stays on the tape). The caller
        restarts the windows if audio was not wanted and now is."""
        if on == self.hands_free:
            return
        self.hands_free = on
        self.pressed = False
        self._close()

    def _end(self, sample: int, reason: str | None = None) -> SpeechMark:
        mark = SpeechMark("end", sample, speech_s=self._detector.speech_s, reason=reason)
        self.pressed = False
        self._close()
        self._detector.reset()
        return mark

    def _close(self) -> None:
        """No utterance is open any more: QUIET if audio is still wanted, else OFF."""
        self.started_at = self.paused_at = None
        self._pause_limit = None
        self.state = MicState.QUIET if self.hands_free or self._tail_pending() else MicState.OFF

    def _tail_pending(self) -> bool:
        return self._tail_until is not None and self._tape.end < self._tail_until
