"""One browser's microphone conditioned for listening: 16 kHz audio on a tape that keeps the sender's time.

Invariants:
- Every decoded microphone frame passes through `Conditioner.take`. While its audio is not wanted
  only the last `PREROLL_S` of it is kept, raw (or what `preload` gave instead), and nothing else
  is computed.
- While it is wanted, audio is resampled to 16 kHz, freed of the assistant's own voice by the echo
  canceller (when there is one; it holds audio back by under 20 ms) and appended to the `Tape`.
  A tape position is a count of 16 kHz samples since the recorder began: it never moves, whatever
  the tape forgets.
- `restart` begins a stretch of wanted audio after one that was not: the raw preroll goes on the
  tape first, as it was heard (the canceller could not follow it: it restarts on it), and what the
  frames' timestamps said before is forgotten (frames were not decoded meanwhile).
- The tape follows the sender's clock, not the packets: a jump in the frames' timestamps (packets
  lost, or a sender that stops sending during silence) becomes silence on the tape, and
  `fill_silence` lays down silence for time in which no frame came at all (`FILL_AFTER_S` of it, or
  `FILL_STOPPED_S` once the sender has stopped), so whatever reads the tape sees time pass.
- The tape forgets only when told (`Tape.trim`), whole chunks from its front; nothing here trims it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import av
import numpy as np
import samplerate

from media.audio import to_float_mono
from media.echo import EchoCanceller
from media.vad import RATE

PREROLL_S = 0.3
"""Audio kept from before an utterance starts, so its first syllable is not clipped."""

FILL_AFTER_S = 0.2
"""No frame for this long inside an utterance: the time since counts as silence."""

FILL_STOPPED_S = 0.02
"""Once the sender is known to have stopped sending (and every packet that came is on the tape),
no frame for this long already counts as silence: a microphone that sends nothing while it is
quiet must not delay the pause, and with it the early transcription, by `FILL_AFTER_S`."""


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


class Conditioner:
    """Decoded microphone frames in, the `tape` out (or the raw preroll, while no audio is wanted)."""

    def __init__(self, *, clock: Callable[[], float], canceller: EchoCanceller | None) -> None:
        self.tape = Tape()
        self.canceller = canceller
        """Removes the assistant's own voice from what is put on the tape (None: nothing removed)."""
        self._clock = clock
        self._raw: deque[np.ndarray] = deque()
        self._raw_samples = 0
        self._rate = 48000
        self._resampler = samplerate.Resampler("sinc_fastest", channels=1)
        self._wall_end = clock()
        """The clock time at which the tape's end was heard."""
        self._next_pts: int | None = None
        """The timestamp the next frame should carry (in its sample rate's units)."""
        self.heard_to: int | None = None
        """The timestamp just after the latest frame taken (its pts units; None if frames carry none)."""
        self.heard_rate = 0
        """The sample rate of that frame."""

    def take(self, frame: av.AudioFrame, *, wanted: bool) -> None:
        """One decoded microphone frame: onto the tape if its audio is `wanted`, else into the preroll."""
        mono = to_float_mono(frame.to_ndarray(), len(frame.layout.channels))
        if frame.sample_rate != self._rate:
            self._rate = frame.sample_rate
            self._resampler.reset()
            self._next_pts = None
        gap = self._gap(frame)
        self._wall_end = self._clock()
        if frame.pts is not None:
            self.heard_to, self.heard_rate = frame.pts + frame.samples, frame.sample_rate
        if not wanted:
            self._keep_raw(mono)
            return
        if gap:
            self._put(np.zeros(round(gap * RATE / self._rate), np.float32))
        self._put(self._resample(mono))

    def fill_silence(self, sender_stopped: Callable[[], bool]) -> bool:
        """If no frame has come for a while, that time was silent: lay it down (the caller asks only
        while an utterance is open). `sender_stopped()`: the sender has stopped sending and all it
        sent is on the tape, so the wait is shorter (asked only when it matters). Returns whether
        any silence was laid down."""
        quiet = self._clock() - self._wall_end
        if quiet < FILL_STOPPED_S or (quiet < FILL_AFTER_S and not sender_stopped()):
            return False
        samples = round(quiet * self._rate)
        if self._next_pts is not None:
            self._next_pts += samples
        self._wall_end += samples / self._rate
        self._put(np.zeros(round(samples * RATE / self._rate), np.float32))
        return True

    def restart(self) -> int:
        """Audio is wanted again: put the preroll kept meanwhile on the tape, and count silence from
        now, not from the last frame taken. Returns the tape position where the preroll begins."""
        self._resampler.reset()
        self._next_pts = None  # frames were not decoded meanwhile: their timestamps jumped
        self.heard_to = None
        self._wall_end = self._clock()
        origin = self.tape.end
        preroll = self._resample(np.concatenate(list(self._raw))) if self._raw else np.zeros(0, np.float32)
        self._raw.clear()
        self._raw_samples = 0
        # The preroll was heard before the canceller could follow: it goes on the tape as it is.
        self.tape.append(preroll if self.canceller is None else self.canceller.restart(preroll))
        return origin

    def preload(self, audio: np.ndarray, rate: int) -> None:
        """The audio just before now, decoded late (frames arrive undecoded while nobody listens):
        it replaces the preroll kept, for the next `restart`."""
        if rate != self._rate:
            self._rate = rate
            self._resampler.reset()
        keep = round(PREROLL_S * rate)
        self._raw = deque([np.asarray(audio[-keep:], np.float32)]) if audio.size else deque()
        self._raw_samples = min(audio.size, keep)

    def wall_time(self, sample: int) -> float:
        """The clock time at which tape position `sample` was heard (from the latest frame's arrival)."""
        return self._wall_end - (self.tape.end - sample) / RATE

    def _gap(self, frame: av.AudioFrame) -> int:
        """Samples missing before this frame, by its timestamp (0 if none, or if it cannot tell)."""
        pts, expected = frame.pts, self._next_pts
        if pts is None:
            return 0
        self._next_pts = max(pts, expected or pts) + frame.samples
        if expected is None or pts <= expected or pts - expected > 10 * self._rate:
            return 0
        return pts - expected

    def _put(self, audio: np.ndarray) -> None:
        """Microphone audio (16 kHz) onto the tape, through the echo canceller."""
        self.tape.append(audio if self.canceller is None else self.canceller.process(audio))

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
