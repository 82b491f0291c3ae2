"""Acoustic echo cancelling on the server: Parley's own voice removed from the microphone, with the
exact audio it sent as the reference (WebRTC's AEC3, through pywebrtc-audio).

Invariants:
- `FarEnd` holds what one outgoing track sent, packet by packet, on the track's own timeline (its
  RTP timestamps, 48 kHz): the last `FAR_MEMORY_S` of it, decoded to 16 kHz only when read.
  Silence packets are never decoded (they are zeros).
- `EchoCanceller.process` takes the microphone's 16 kHz float32 mono stream in chunks of any size
  and returns it cleaned in whole 10 ms frames (AEC3's unit): the output is the input `DELAY`
  samples (8 ms) later, plus the part of a frame still pending (under 10 ms). Nothing is dropped
  or repeated, whether a frame is cancelled or passed through, or the canceller switches between.
- Each microphone frame is cancelled against the far-end frame that was sent when it arrived: the
  two streams advance in lock step, 10 ms for 10 ms, so the echo path (network, the browser's
  buffers, speaker and room) is a delay AEC3 estimates and tracks itself. The lock is re-set, a
  step AEC3 re-learns, when what is read would run past what was sent or fall `DRIFT_S` behind it
  (a microphone that was not listened to, a new track), and moved on when the least lead seen
  over `WATCH_S` exceeds `LEAD_S + SLACK_S` (the microphone audio was late when it was set).
- While AEC3 is still learning (its first `LEARNING_S` of audio sent), a frame is cancelled only if
  its window is alike to what was sent (`ECHO_PRESENT`): the user's voice with no echo in it goes
  on untouched, though AEC3 would take it for echo.
- `echo_like` says whether the latest microphone window (before cancelling) is the same waveform
  as some stretch of what was sent within `SEARCH_S` before it: a second line for the moments
  AEC3 is (re-)learning the path, which a browser's jitter buffer changes as it likes.
- While nothing has been sent but silence for `TAIL_S`, frames pass through untouched and AEC3
  is not called: a quiet session costs nothing, and speech with no echo to remove is unchanged.
  Its state (the learnt echo path) is kept for the next answer.
- Not thread-safe (neither is WebRTC): one caller at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np

from media.opus import RTP_CLOCK_HZ, SILENCE_PACKET

RATE = 16000
FRAME = RATE // 100
"""Samples in one of AEC3's 10 ms frames."""
DELAY = 128
"""Samples AEC3 returns its input late by at 16 kHz (measured; 8 ms). Frames that pass untouched are
held back as long, so the output is always the input DELAY samples later, cancelled or not."""
DOWN = RTP_CLOCK_HZ // RATE
"""RTP clock ticks per 16 kHz sample."""
FAR_MEMORY_S = 2.0
"""How much sent audio is kept: more than any echo path plus the lock's slack."""
TAIL_S = 1.0
"""After the last sound sent, how long its echo may still be arriving (the canceller stays on)."""
LEAD_S = 0.02
"""How far behind what was sent last the far end is read, at the least: microphone audio arriving
in a burst after a delay must not run past what was sent (what is read before it is sent is
never read again)."""
SLACK_S = 0.04
"""Microphone audio arriving later than it did is only late: the lock moves to the least lead seen
over a `WATCH_S` stretch only when that is more than LEAD_S + SLACK_S."""
WATCH_S = 2.0
"""How long the least lead is watched before the lock moves on to it."""
DRIFT_S = 0.5
"""The lock is set again when the far end read is further than this behind what was sent."""
LIKENESS_WINDOW = 512
"""Microphone samples `echo_like` compares (32 ms, one VAD window)."""
SEARCH_S = 0.5
"""How far before a microphone window its echo's source is looked for, beyond the lock's lead."""
ECHO_PRESENT = 0.75
"""Below this likeness a microphone window holds no echo worth removing (speech alone measured 0.59
at p95): AEC3 still learns from it, but what goes on is the window as it came. Fed speech while
Parley talked into a headset (nothing comes back), AEC3 took it for echo until it had heard ~10 s
of the answer: Whisper tiny.en's word error rate on 40 fresh clips went from 5.4 % to 85 %; with
this, 4.2-6.9 %. Higher passes more echo that a room's reverberation makes less alike (a
synthetic room with two reflections: 37 and 24 dB removed at 0.75; 0.8 left 21 dB), lower
passes less of the user (0.7: 9.6-11.5 %)."""
LEARNING_S = 10.0
"""For this much audio sent (counted while something was), AEC3 is learning the echo path and may
take the user's voice for echo: only then does a frame not alike to what was sent go on untouched.
After it, AEC3's output goes on (it removes echo that the user's voice, mixed in, makes less alike)."""
ECHO_LIKE = 0.85
"""A microphone window this alike to some stretch of what was sent (normalized cross-correlation)
is that audio coming back. Measured through Chromium, loopback, Opus both ways and a jitter buffer
that kept changing its delay: echo alone 0.91 (p5) to 0.98 (p95); speech 6 dB over that echo 0.56
(p50), 0.89 (p95); speech alone 0.37 (p50)."""


class _Sent:
    """One non-silent packet that left the track, and its audio once decoded."""

    __slots__ = ("data", "pcm", "pts", "samples")

    def __init__(self, pts: int, samples: int, data: bytes) -> None:
        self.pts, self.samples, self.data = pts, samples, data
        self.pcm: np.ndarray | None = None
        """16 kHz audio (None until a read needs it)."""


class FarEnd:
    """What one outgoing track sent: Opus packets by their RTP timestamp, decoded when first read."""

    def __init__(self) -> None:
        self._packets: deque[_Sent] = deque()
        """Non-silent packets sent in the last FAR_MEMORY_S, oldest first."""
        self.end = 0
        """Where what was sent ends, in 16 kHz samples of the track's timeline."""
        self.last_sound = -(10**9)
        """Where the latest non-silent packet ended (16 kHz samples)."""
        self._decoder: Any = None
        self._decoded_to: _Sent | None = None
        """The latest packet decoded (packets are decoded in the order they were sent)."""
        self._history = np.zeros(_LOW_PASS.size - 1, np.float32)
        """The 48 kHz samples the low-pass filter still needs from the packets before."""

    def sent(self, pts: int, samples: int, data: bytes) -> None:
        """A packet left the track: `pts` and `samples` on the 48 kHz RTP clock."""
        self.end = (pts + samples) // DOWN
        if data == SILENCE_PACKET:
            return
        self._packets.append(_Sent(pts, samples, data))
        self.last_sound = self.end
        while self._packets and self._packets[0].pts < pts - FAR_MEMORY_S * RTP_CLOCK_HZ:
            self._packets.popleft()

    def sounding(self, a: int, b: int) -> bool:
        """Whether anything but silence was sent in [a - TAIL_S, b) (16 kHz samples): its echo may be
        in microphone audio taken over [a, b)."""
        return self.last_sound > a - TAIL_S * RATE and bool(self._packets) and self._packets[0].pts // DOWN < b

    def read(self, a: int, b: int) -> np.ndarray:
        """The audio sent over [a, b) in 16 kHz samples (zeros for silence and what is not kept)."""
        out = np.zeros(b - a, np.float32)
        for index, sent in enumerate(self._packets):
            start, stop = sent.pts // DOWN, (sent.pts + sent.samples) // DOWN
            if stop <= a:
                continue
            if start >= b:
                break
            pcm = self._decode(index)
            lo, hi = max(a, start), min(b, start + pcm.size)
            if hi > lo:
                out[lo - a : hi - a] = pcm[lo - start : hi - start]
        return out

    def _decode(self, index: int) -> np.ndarray:
        """Packet `index`'s audio at 16 kHz. Every packet before it is decoded first, in the order they
        were sent, so the decoder and the low-pass filter run on one continuous stream."""
        wanted = self._packets[index]
        if wanted.pcm is not None:
            return wanted.pcm
        first = index
        while first > 0 and self._packets[first - 1].pcm is None:
            first -= 1
        for i in range(first, index + 1):
            self._decode_one(self._packets[i])
        assert wanted.pcm is not None
        return wanted.pcm

    def _decode_one(self, sent: _Sent) -> None:
        before = self._decoded_to
        if self._decoder is None:
            self._decoder = _opus_decoder()
        if before is None or sent.pts != before.pts + before.samples:
            self._history[:] = 0  # silence (never decoded) or packets no longer kept came between
        self._decoded_to = sent
        chunks = []
        try:
            for frame in self._decoder.decode(av.Packet(sent.data)):
                chunks.append(frame.to_ndarray().reshape(-1))
        except av.error.FFmpegError:
            pass
        pcm48 = np.concatenate(chunks) if chunks else np.zeros(sent.samples, np.int16)
        pcm48 = pcm48.astype(np.float32) / (32768.0 if pcm48.dtype.kind == "i" else 1.0)
        # The libopus decoder in FFmpeg always gives 48 kHz: low-pass at 7 kHz, then every third sample.
        padded = np.concatenate((self._history, pcm48))
        self._history = padded[-(_LOW_PASS.size - 1) :]
        sent.pcm = np.convolve(padded, _LOW_PASS, mode="valid")[::DOWN].astype(np.float32)


def _low_pass(taps: int = 31, cutoff_hz: float = 7000.0) -> np.ndarray:
    """A windowed-sinc low-pass filter for 48 kHz audio, unit gain at DC."""
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff_hz / RTP_CLOCK_HZ * n) * np.hamming(taps)
    return (h / h.sum()).astype(np.float32)


_LOW_PASS = _low_pass()


def _opus_decoder() -> Any:
    codec = av.CodecContext.create("libopus", "r")
    codec.sample_rate = RTP_CLOCK_HZ
    codec.layout = "mono"
    return codec


class EchoCanceller:
    """One microphone stream's echo canceller; `far()` gives the current track's `FarEnd` (None
    while no media is connected: audio passes through)."""

    def __init__(self, far: Callable[[], FarEnd | None]) -> None:
        self._far = far
        self._engine: Any = None
        self._pending = np.zeros(0, np.float32)
        self._line = np.zeros(DELAY, np.float32)
        """The last DELAY microphone samples: what AEC3 holds back, held back here when it is not called."""
        self._engine_fresh = False
        """Whether AEC3 processed the frame before this one (its held-back samples are current)."""
        self._lock: tuple[FarEnd, int] | None = None
        """(the far end, where in it the next microphone frame is cancelled against)."""
        self.frames = 0
        """Microphone frames processed."""
        self.cancelled = 0
        """Of those, frames that went through AEC3 (the rest passed untouched)."""
        self.passed = 0
        """Of the frames that went through AEC3, those whose input went on instead (not echo)."""
        self._watch = (0, 10**9)
        """(microphone samples since the watch began, the least lead seen over them)."""
        self._recent = np.zeros(0, np.float32)
        """The latest LIKENESS_WINDOW microphone samples, as they came in (before cancelling)."""
        self._likeness: tuple[int, float] | None = None
        """(the far end position it was measured at, `likeness`), for one window asked twice."""
        self._energy = [0.0, 0.0]
        """Energy of the microphone audio into and out of AEC3 lately (decaying): how much it removes."""

    def process(self, near: np.ndarray) -> np.ndarray:
        """16 kHz float32 microphone audio in; the same audio, echo removed, out in whole frames."""
        pending = np.concatenate((self._pending, near.astype(np.float32, copy=False))) if self._pending.size else near
        whole = pending.size - pending.size % FRAME
        self._pending = np.array(pending[whole:], np.float32)
        if not whole:
            return np.zeros(0, np.float32)
        return self._cancel(np.asarray(pending[:whole], np.float32))

    def restart(self, before: np.ndarray) -> np.ndarray:
        """The microphone stream was not followed for a while: start again after `before`, the audio
        kept from just before now, which is returned as it is (less the part held back, as always)
        and not cancelled. What was pending is dropped and the lock is set again."""
        joined = np.concatenate((np.zeros(DELAY, np.float32), np.asarray(before, np.float32)))
        self._pending = np.zeros(0, np.float32)
        self._line = joined[-DELAY:].copy()
        self._engine_fresh = False
        self._lock = None
        self._recent = np.zeros(0, np.float32)
        return joined[:-DELAY]

    def _cancel(self, near: np.ndarray) -> np.ndarray:
        far = self._far()
        frames = near.size // FRAME
        self.frames += frames
        self._recent = np.concatenate((self._recent, near))[-LIKENESS_WINDOW:]
        at = 0
        if far is not None:
            at = self._locked(far, near.size)
            self._lock = (far, at + near.size)
        else:
            self._lock = None
        if far is None or not far.sounding(at, at + near.size):
            out = np.concatenate((self._line, near[:-DELAY]))
            self._line, self._engine_fresh = near[-DELAY:].copy(), False
            return out
        self.cancelled += frames
        if self._engine is None:
            from pywebrtc_audio import EchoCanceller as AEC3

            self._engine = AEC3(sample_rate=RATE)
        reference = far.read(at, at + near.size)
        out = np.array(self._engine.process(near, reference), np.float32)
        self._energy = [0.98 * self._energy[0] + float(np.dot(near, near)), 0.98 * self._energy[1] + float(np.dot(out, out))]
        raw = np.concatenate((self._line, near[:-DELAY]))  # the same samples as `out`, untouched
        if not self._engine_fresh:
            out[:DELAY] = self._line  # AEC3 still held the end of its last call, not these samples
            self._engine_fresh = True
        self._line = near[-DELAY:].copy()
        learning = self.cancelled <= LEARNING_S * 100
        if learning and self._recent.size >= LIKENESS_WINDOW and self._measure() < ECHO_PRESENT:
            # Not the echo: the user's voice or the room. AEC3 may still be learning that nothing
            # comes back (it then takes the user for echo and suppresses them), so it goes as it is.
            self.passed += frames
            return raw
        return out

    def _locked(self, far: FarEnd, samples: int) -> int:
        """Where in the far end the next microphone frame goes. The lead (what was sent, less what is
        read) is the echo path's delay the lock takes away: the lock is set again when the lead
        leaves [0, DRIFT_S), and moved on to the least lead seen over WATCH_S when that stays above
        LEAD_S + SLACK_S (the microphone audio was late when the lock was set: at a start, under load)."""
        lock = self._lock
        lead = None if lock is None or lock[0] is not far else far.end - lock[1]
        if lock is None or lead is None or not 0 <= lead < DRIFT_S * RATE:
            self._watch = (0, 10**9)
            return max(0, far.end - round(LEAD_S * RATE))
        seen, least = self._watch
        seen, least = seen + samples, min(least, lead)
        if seen < WATCH_S * RATE:
            self._watch = (seen, least)
            return lock[1]
        self._watch = (0, 10**9)
        excess = least - round(LEAD_S * RATE)
        return lock[1] + excess if excess > SLACK_S * RATE else lock[1]

    def echo_like(self) -> bool:
        """Whether the latest microphone window is what was sent coming back, whatever the canceller
        made of it: a second line for the moments AEC3 is still learning, or re-learning a path
        whose delay changed (a browser's jitter buffer grows and shrinks its delay as it likes)."""
        lock = self._lock
        if lock is None or self._recent.size < LIKENESS_WINDOW:
            return False
        far, end = lock
        if not far.sounding(end - LIKENESS_WINDOW, end):
            return False
        return self._measure() >= ECHO_LIKE

    def _measure(self) -> float:
        """`likeness` of the latest microphone window to what was sent before it (measured once)."""
        assert self._lock is not None
        far, end = self._lock
        if self._likeness is None or self._likeness[0] != end:
            reference = far.read(end - LIKENESS_WINDOW - round(SEARCH_S * RATE), end)
            self._likeness = (end, likeness(self._recent, reference))
        return self._likeness[1]

    @property
    def removed_db(self) -> float | None:
        """How much quieter AEC3 made the microphone lately, in dB (None before it ran)."""
        into, out = self._energy
        return None if into <= 0 else 10 * float(np.log10(into / max(out, 1e-12)))


def likeness(near: np.ndarray, reference: np.ndarray) -> float:
    """The largest normalized cross-correlation of `near` with any stretch of `reference` as long
    (1.0: the same waveform, at some delay and gain), compared at 8 kHz (speech is alike below
    4 kHz, and it costs half)."""
    near, reference = _half(near), _half(reference)
    n, m = near.size, reference.size
    if m < n or not np.any(near):
        return 0.0
    size = 1 << (n + m - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(near, size)), size)[: m - n + 1]
    energy = np.concatenate(([0.0], np.cumsum(np.square(reference, dtype=np.float64))))
    windows = energy[n:] - energy[:-n]
    scale = np.sqrt(np.maximum(windows, 1e-12) * float(np.dot(near, near)))
    return float(np.max(np.abs(corr) / scale))


def _half(audio: np.ndarray) -> np.ndarray:
    """16 kHz to 8 kHz, roughly: pairs averaged."""
    even = audio[: audio.size - audio.size % 2]
    return np.asarray(0.5 * (even[0::2] + even[1::2]), np.float32)
