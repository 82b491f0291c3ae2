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
  step AEC3 re-learns, only when the streams drift apart by more than the slack allowed (a
  microphone that was not listened to, a new track, clock drift over hours).
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
from media.opus import toc_duration_samples as toc_samples

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
LEAD_S = 0.06
"""The far end is read this far behind what was sent last when the lock is set: microphone audio
that arrives in a burst (network jitter) must not run past what was sent."""
DRIFT_S = 0.5
"""The lock is re-set when the far end read is further than this behind what was sent."""


class FarEnd:
    """What one outgoing track sent: Opus packets by their RTP timestamp, decoded when read."""

    def __init__(self) -> None:
        self._packets: deque[tuple[int, int, bytes]] = deque()
        """(pts, samples, data) of non-silent packets sent in the last FAR_MEMORY_S, oldest first."""
        self.end = 0
        """Where what was sent ends, in 16 kHz samples of the track's timeline."""
        self.last_sound = -(10**9)
        """Where the latest non-silent packet ended (16 kHz samples)."""
        self._decoder: Any = None
        self._decoded: tuple[int, np.ndarray] | None = None
        """The latest packet decoded: (its start in 16 kHz samples, its audio)."""
        self._decoded_to = -1
        """The pts of the latest packet fed to the decoder."""
        self._decoded_samples = 0
        self._history = np.zeros(0, np.float32)
        """The 48 kHz samples the low-pass filter still needs from the packets before."""

    def sent(self, pts: int, samples: int, data: bytes) -> None:
        """A packet left the track: `pts` and `samples` on the 48 kHz RTP clock."""
        self.end = (pts + samples) // DOWN
        if data == SILENCE_PACKET:
            return
        self._packets.append((pts, samples, data))
        self.last_sound = self.end
        while self._packets and self._packets[0][0] < pts - FAR_MEMORY_S * RTP_CLOCK_HZ:
            self._packets.popleft()

    def sounding(self, a: int, b: int) -> bool:
        """Whether anything but silence was sent in [a - TAIL_S, b) (16 kHz samples): its echo may be
        in microphone audio taken over [a, b)."""
        return self.last_sound > a - TAIL_S * RATE and bool(self._packets) and self._packets[0][0] // DOWN < b

    def read(self, a: int, b: int) -> np.ndarray:
        """The audio sent over [a, b) in 16 kHz samples (zeros for silence and what is not kept)."""
        out = np.zeros(b - a, np.float32)
        for pts, samples, data in self._packets:
            start, stop = pts // DOWN, (pts + samples) // DOWN
            if stop <= a:
                continue
            if start >= b:
                break
            pcm = self._decode(pts, data)
            lo, hi = max(a, start), min(b, start + pcm.size)
            if hi > lo:
                out[lo - a : hi - a] = pcm[lo - start : hi - start]
        return out

    def _decode(self, pts: int, data: bytes) -> np.ndarray:
        """One packet's audio at 16 kHz. Packets are decoded in the order they were sent (a read goes
        forwards), so the decoder and the low-pass filter run on one continuous stream."""
        if self._decoded is not None and self._decoded[0] == pts // DOWN:
            return self._decoded[1]
        if self._decoder is None or pts <= self._decoded_to:
            self._decoder = _opus_decoder()
            self._history = np.zeros(_LOW_PASS.size - 1, np.float32)
        elif pts != self._decoded_to + self._decoded_samples:
            self._history[:] = 0  # silence (not decoded) came between: the filter starts from it
        self._decoded_to, self._decoded_samples = pts, toc_samples(data)
        chunks = []
        try:
            for frame in self._decoder.decode(av.Packet(data)):
                chunks.append(frame.to_ndarray().reshape(-1))
        except av.error.FFmpegError:
            pass
        pcm48 = np.concatenate(chunks) if chunks else np.zeros(self._decoded_samples, np.int16)
        pcm48 = pcm48.astype(np.float32) / (32768.0 if pcm48.dtype.kind == "i" else 1.0)
        # The libopus decoder in FFmpeg always gives 48 kHz: low-pass at 7 kHz, then every third sample.
        padded = np.concatenate((self._history, pcm48))
        self._history = padded[-(_LOW_PASS.size - 1) :]
        pcm = np.convolve(padded, _LOW_PASS, mode="valid")[::DOWN].astype(np.float32)
        self._decoded = (pts // DOWN, pcm)
        return pcm


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
        return joined[:-DELAY]

    def _cancel(self, near: np.ndarray) -> np.ndarray:
        far = self._far()
        frames = near.size // FRAME
        self.frames += frames
        at = 0
        if far is not None:
            at = self._locked(far)
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
        out = np.array(self._engine.process(near, far.read(at, at + near.size)), np.float32)
        if not self._engine_fresh:
            out[:DELAY] = self._line  # AEC3 still held the end of its last call, not these samples
            self._engine_fresh = True
        self._line = near[-DELAY:].copy()
        return out

    def _locked(self, far: FarEnd) -> int:
        """Where in the far end the next microphone frame goes, re-set if the streams drifted apart."""
        lock = self._lock
        if lock is None or lock[0] is not far or lock[1] > far.end or lock[1] < far.end - DRIFT_S * RATE:
            return max(0, far.end - round(LEAD_S * RATE))
        return lock[1]
