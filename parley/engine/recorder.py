"""One browser's microphone: 16 kHz audio on a tape, voice activity and turn boundaries marked.

Invariants:
- Every decoded microphone frame passes through `feed`. While nobody listens (push-to-talk with
  the key up) only the last `PREROLL_S` of raw audio is kept and nothing else is computed.
- While listening (the key is down, or hands-free), audio is resampled to 16 kHz, freed of the
  assistant's own voice by the echo canceller (when there is one; it holds audio back by under
  20 ms), and put on the tape; every 32 ms window goes through the VAD and the speech detector, at
  once, in order; the events that come back carry positions on the tape (16 kHz samples since the
  recorder began).
- The tape follows the sender's clock, not the packets: a jump in the frames' timestamps (packets
  lost, or a sender that stops sending during silence) becomes silence on the tape, and while an
  utterance is open `fill_silence` lays down silence for time in which no frame came at all, so
  an utterance always ends even when its audio stops arriving.
- An utterance lasts from its start (key down, or speech in hands-free, with `PREROLL_S` before
  it) to its `end` event: the key coming up, `end_silence_s` of silence in hands-free (or, at a
  pause the session judged, the silence it gave in `limit_pause`), or the recording limit.
  `pause`/`resume` mark the pauses inside it; `speech` fires once, when it has had
  `barge_in_min_s` of speech. Nothing before the utterance is kept on the tape but the
  preroll, so memory is bounded by the recording limit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
import samplerate

from media.audio import to_float_mono
from media.echo import EchoCanceller
from media.vad import RATE, WINDOW, SileroVAD, SpeechDetector, VADSettings, rms
from parley.config import TurnConfig

PREROLL_S = 0.3
"""Audio kept from before an utterance starts, so its first syllable is not clipped."""

GAP_KEPT_AFTER_S = 0.2
"""Of a pause inside an utterance, the speech audio keeps this much after the speech stopped (soft
word endings are quieter than the VAD's threshold)..."""
GAP_KEPT_BEFORE_S = 0.15
"""...and this much before it came back (the VAD hears a word's onset late); the rest of a longer
pause is left out of what is transcribed (`Recorder.speech_audio`)."""

FILL_AFTER_S = 0.2
"""No frame for this long inside an utterance: the time since counts as silence."""

FILL_STOPPED_S = 0.02
"""Once the sender is known to have stopped sending (and every packet that came is on the tape),
no frame for this long already counts as silence: a microphone that sends nothing while it is
quiet must not delay the pause, and with it the early transcription, by `FILL_AFTER_S`."""

TurnKind = Literal["start", "speech", "pause", "resume", "end"]


@dataclass(frozen=True)
class TurnEvent:
    kind: TurnKind
    sample: int
    """Where on the tape: the utterance's first sample (start), speech's first or first quiet window,
    the end of speech (end; the tape's end if speech was still going on)."""
    speech_s: float = 0.0
    """end: seconds of speech the utterance held."""
    reason: str | None = None
    """end: why the recorder ended it on its own (the recording limit)."""


class Tape:
    """16 kHz mono float32 audio addressed by absolute sample; old audio is dropped from the front."""

    def __init__(self) -> None:
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self.start = 0
        self.end = 0

    def append(self, audio: np.ndarray) -> None:
        if audio.size:
            self._chunks.append((self.end, audio))
            self.end += audio.size

    def slice(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b), clamped to what the tape still holds."""
        a, b = max(a, self.start), min(b, self.end)
        parts = [chunk[max(0, a - at) : max(0, b - at)] for at, chunk in self._chunks if at < b and at + chunk.size > a]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def trim(self, before: int) -> None:
        """Forget whole chunks that end before `before`."""
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].size <= before:
            at, chunk = self._chunks.popleft()
            self.start = at + chunk.size


class Recorder:
    """The microphone of one session: push-to-talk (`press`/`release`) or hands-free."""

    def __init__(
        self,
        turn: TurnConfig,
        *,
        max_record_s: float,
        clock: Callable[[], float] = time.monotonic,
        canceller: EchoCanceller | None = None,
        gate: Callable[[float], bool] | None = None,
    ) -> None:
        self.turn = turn
        self.canceller = canceller
        """Removes the assistant's own voice from what is put on the tape (None: nothing removed)."""
        self.max_record_s = max_record_s
        self.hands_free = turn.hands_free
        self.tape = Tape()
        self.gate: Callable[[float], bool] = gate or (lambda level: True)
        """Per window: may a window this loud count as speech? (The session rejects its own echo.)"""
        self._clock = clock
        self._vad = SileroVAD()
        self._settings = VADSettings(
            threshold=turn.vad_threshold,
            end_threshold=turn.vad_end_threshold,
            pause_windows=max(1, round(turn.pause_s * RATE / WINDOW)),
        )
        self._detector = SpeechDetector(self._settings)
        self._origin = 0
        """Tape sample where the detector's first window began."""
        self._cursor = 0
        """Tape sample where the next VAD window begins."""
        self._pressed = False
        self._tail_until: int | None = None
        """After a release mid-speech, the tape keeps filling up to here (RTP lags the key)."""
        self._raw: deque[np.ndarray] = deque()
        self._raw_samples = 0
        self._rate = 48000
        self._resampler = samplerate.Resampler("sinc_fastest", channels=1)
        self._wall_end = clock()
        self._next_pts: int | None = None
        """The timestamp the next frame should carry (in its sample rate's units)."""
        self.utterance: int | None = None
        """Tape sample where the current utterance began; None between utterances."""
        self.paused_at: int | None = None
        """Where the latest pause in the current utterance began; None while speech goes on."""
        self.gaps: list[tuple[int, int]] = []
        """(where speech paused, where it came back) for the pauses inside utterances still on the tape."""
        self._speech_reported = False
        self.end_silence_s = turn.end_silence_s
        """Hands-free: silence that ends an utterance by itself (the session raises it when a turn
        model decides sooner: then only a long silence ends a turn the model finds unfinished)."""
        self._pause_limit: float | None = None
        """The silence that ends the utterance at the current pause, as the session judged it."""
        self.heard_to: int | None = None
        """The timestamp just after the latest frame fed (its pts units; None if frames carry none)."""
        self.heard_rate = 0
        """The sample rate of that frame."""
        self.presses = 0
        """How many times the talk key went down: a release that waited knows if another press came."""

    # -- what the session asks ------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._pressed or self.hands_free or (self._tail_until is not None and self.tape.end < self._tail_until)

    @property
    def speaking(self) -> bool:
        """Speech is going on now (VAD), in an utterance."""
        return self.utterance is not None and self._detector.speaking

    @property
    def speech_s(self) -> float:
        return self._detector.speech_s

    def audio(self, a: int, b: int) -> np.ndarray:
        return self.tape.slice(a, b)

    def speech_audio(self, a: int, b: int) -> np.ndarray:
        """The tape from `a` to `b` as the ASR should hear it: each pause inside an utterance cut
        down to its first `GAP_KEPT_AFTER_S` and its last `GAP_KEPT_BEFORE_S`. Whisper hears a
        thinking pause ("What is the capital of ... Italy?") as the end and drops the words after
        it, or reads them alone, without the words before, as something else."""
        after, before = round(GAP_KEPT_AFTER_S * RATE), round(GAP_KEPT_BEFORE_S * RATE)
        cuts = [(max(a, p + after), min(b, r - before)) for p, r in self.gaps if r - p > after + before]
        cuts = [(x, y) for x, y in cuts if y > x]
        if not cuts:
            return self.tape.slice(a, b)
        parts, at = [], a
        for x, y in sorted(cuts):
            parts.append(self.tape.slice(at, x))
            at = y
        parts.append(self.tape.slice(at, b))
        return np.concatenate(parts)

    def wall_time(self, sample: int) -> float:
        """The clock time at which tape position `sample` was heard (from the latest frame's arrival)."""
        return self._wall_end - (self.tape.end - sample) / RATE

    # -- frames in --------------------------------------------------------------------------

    def feed(self, frame: av.AudioFrame) -> list[TurnEvent]:
        """One decoded microphone frame; returns the events it completes, in order."""
        mono = to_float_mono(frame.to_ndarray(), len(frame.layout.channels))
        if frame.sample_rate != self._rate:
            self._rate = frame.sample_rate
            self._resampler.reset()
            self._next_pts = None
        gap = self._gap(frame)
        self._wall_end = self._clock()
        if frame.pts is not None:
            self.heard_to, self.heard_rate = frame.pts + frame.samples, frame.sample_rate
        if not self.listening:
            self._keep_raw(mono)
            return []
        if gap:
            self._put(np.zeros(round(gap * RATE / self._rate), np.float32))
        self._put(self._resample(mono))
        return self._analyse()

    def _put(self, audio: np.ndarray) -> None:
        """Microphone audio (16 kHz) onto the tape, through the echo canceller."""
        self.tape.append(audio if self.canceller is None else self.canceller.process(audio))

    def _gap(self, frame: av.AudioFrame) -> int:
        """Samples missing before this frame, by its timestamp (0 if none, or if it cannot tell)."""
        pts, expected = frame.pts, self._next_pts
        if pts is None:
            return 0
        self._next_pts = max(pts, expected or pts) + frame.samples
        if expected is None or pts <= expected or pts - expected > 10 * self._rate:
            return 0
        return pts - expected

    def fill_silence(self, sender_stopped: Callable[[], bool] = lambda: False) -> list[TurnEvent]:
        """While an utterance is open and no frame has come for a while, that time was silent:
        lay it down, so the utterance can end. `sender_stopped()`: the sender has stopped sending
        and all it sent is on the tape, so the wait is shorter (asked only when it matters).
        Returns the events that completes."""
        quiet = self._clock() - self._wall_end
        if self.utterance is None or not self.listening or quiet < FILL_STOPPED_S:
            return []
        if quiet < FILL_AFTER_S and not sender_stopped():
            return []
        samples = round(quiet * self._rate)
        if self._next_pts is not None:
            self._next_pts += samples
        self._wall_end += samples / self._rate
        self._put(np.zeros(round(samples * RATE / self._rate), np.float32))
        return self._analyse()

    def _keep_raw(self, mono: np.ndarray) -> None:
        self._raw.append(mono)
        self._raw_samples += mono.size
        while self._raw_samples - self._raw[0].size >= PREROLL_S * self._rate:
            self._raw_samples -= self._raw.popleft().size

    def _resample(self, mono: np.ndarray) -> np.ndarray:
        if self._rate == RATE:
            return mono
        out = self._resampler.process(mono, RATE / self._rate, end_of_input=False)
        return np.asarray(out, np.float32).reshape(-1)

    def preload(self, audio: np.ndarray, rate: int) -> None:
        """The audio just before now, decoded late (frames arrive undecoded while nobody listens):
        it becomes the preroll of the next utterance."""
        if rate != self._rate:
            self._rate = rate
            self._resampler.reset()
        keep = round(PREROLL_S * rate)
        self._raw = deque([np.asarray(audio[-keep:], np.float32)]) if audio.size else deque()
        self._raw_samples = min(audio.size, keep)

    def _start_listening(self) -> None:
        """Begin VAD here, with the preroll kept while nobody listened put on the tape first."""
        self._resampler.reset()
        self._next_pts = None  # frames were not decoded meanwhile: their timestamps jumped
        self.heard_to = None
        self._wall_end = self._clock()  # silence is counted from here, not from the last frame decoded
        self._origin = self._cursor = self.tape.end
        preroll = self._resample(np.concatenate(list(self._raw))) if self._raw else np.zeros(0, np.float32)
        self._raw.clear()
        self._raw_samples = 0
        # The preroll was heard before the canceller could follow: it goes on the tape as it is.
        self.tape.append(preroll if self.canceller is None else self.canceller.restart(preroll))
        self._vad.reset()
        self._detector = SpeechDetector(self._settings)

    def _analyse(self) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        while self.tape.end - self._cursor >= WINDOW:
            window = self.tape.slice(self._cursor, self._cursor + WINDOW)
            self._cursor += WINDOW
            (prob,) = self._vad.feed(window)
            level = rms(window)
            event = self._detector.update(prob, level, allowed=self.gate(level))
            if event is not None:
                events += self._on_speech(event.kind, self._origin + round(event.at * RATE))
            events += self._check_time()
        if self.utterance is None and self.hands_free:
            self.tape.trim(self._cursor - round(PREROLL_S * RATE))
        return events

    def _on_speech(self, kind: str, sample: int) -> list[TurnEvent]:
        if kind == "pause":
            self.paused_at = sample
            self._pause_limit = None
            return [TurnEvent("pause", sample)] if self.utterance is not None else []
        if self.utterance is not None and self.paused_at is not None:
            self.gaps = [(p, r) for p, r in self.gaps if r > self.tape.start] + [(self.paused_at, sample)]
        self.paused_at = None
        if self.utterance is None:
            if not self.hands_free:
                return []
            self.utterance = max(self.tape.start, sample - round(PREROLL_S * RATE))
            self._speech_reported = False
            return [TurnEvent("start", self.utterance)]
        return [TurnEvent("resume", sample)]  # speech (again) inside an utterance: any early work is stale

    def _check_time(self) -> list[TurnEvent]:
        """Events that depend on how long something has lasted: speech enough to barge in, the
        hands-free end of turn, the recording limit."""
        if self.utterance is None:
            return []
        out: list[TurnEvent] = []
        if not self._speech_reported and self._detector.speech_s >= self.turn.barge_in_min_s and self._detector.heard_speech:
            self._speech_reported = True
            out.append(TurnEvent("speech", self._cursor))
        if (self._cursor - self.utterance) / RATE > self.max_record_s:
            limit = f"Recording stopped at the {self.max_record_s:g}-second limit."
            out.append(self._end(self._cursor, reason=limit))
        elif self.hands_free and not self._pressed and self.paused_at is not None:
            silent_s = (self._cursor - self.paused_at) / RATE
            if silent_s >= (self.end_silence_s if self._pause_limit is None else self._pause_limit):
                out.append(self._end(self.paused_at))
        return out

    def limit_pause(self, paused_at: int, silence_s: float) -> TurnEvent | None:
        """Hands-free: the session judged the pause that began at `paused_at`: `silence_s` of it
        ends the utterance (there). Returns the end event if the pause has lasted that long
        already; None if it has not (the recorder ends it when it does), or if speech came back
        (or the utterance ended) since."""
        if self.utterance is None or self._pressed or self.paused_at != paused_at:
            return None
        if (self._cursor - paused_at) / RATE >= silence_s:
            return self._end(paused_at)
        self._pause_limit = silence_s
        return None

    def drop_utterance(self) -> None:
        """Forget the utterance going on, with no end event (hands-free: it was a backchannel); the
        next speech starts a new one."""
        if self._pressed:
            return
        self.utterance = None
        self.paused_at = None
        self._pause_limit = None
        self._detector.reset()

    def _end(self, sample: int, reason: str | None = None) -> TurnEvent:
        event = TurnEvent("end", sample, speech_s=self._detector.speech_s, reason=reason)
        self.utterance = None
        self.paused_at = None
        self._pressed = False
        self._detector.reset()
        return event

    # -- push-to-talk and mode --------------------------------------------------------------

    def press(self) -> TurnEvent:
        """The talk key went down: an utterance starts here (with the preroll before it)."""
        if not self.listening:
            self._start_listening()
        self._pressed = True
        self.presses += 1
        self._detector.reset()
        self.paused_at = None
        self._speech_reported = False
        self.utterance = max(self.tape.start, self._origin, self.tape.end - round(PREROLL_S * RATE))
        self.tape.trim(self.utterance)  # earlier turns' audio is done with (the session dropped their work)
        return TurnEvent("start", self.utterance)

    def release(self, tail_s: float = 0.0) -> TurnEvent | None:
        """The talk key came up: the utterance ends where its speech ended, or, if speech was still
        going on, at the tape's end; the tape then keeps filling for `tail_s` more (the audio still
        on its way), which the caller waits for."""
        if not self._pressed or self.utterance is None:
            self._pressed = False
            return None
        still_speaking = self._detector.speaking or self.paused_at is None
        end = self.tape.end if still_speaking else self.paused_at
        assert end is not None
        if still_speaking and tail_s > 0:
            self._tail_until = self.tape.end + round(tail_s * RATE)
        return self._end(end)

    def set_hands_free(self, on: bool) -> None:
        """Switch modes; an utterance in progress is dropped (its audio stays on the tape)."""
        if on == self.hands_free:
            return
        was_listening = self.listening
        self.hands_free = on
        self.utterance = None
        self.paused_at = None
        self._pressed = False
        if self.listening and not was_listening:
            self._start_listening()
