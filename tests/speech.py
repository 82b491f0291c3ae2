"""Test helpers that make and read speech audio: hibari speech, 16-bit WAVs and Opus decoding.

Invariant: every array these helpers return is 1-D float32 mono in [-1, 1] at the rate named by
the caller, so tests compare audio without caring which engine made it.
"""

from __future__ import annotations

import functools
import wave
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
import samplerate
from hibari import SAMPLE_RATE, Hibari

from parley.types import OpusPacket


@functools.cache
def _hibari() -> Hibari:
    return Hibari()


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 audio converted from one rate to another (libsamplerate, sinc)."""
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    out = samplerate.resample(audio.astype(np.float32, copy=False), to_rate / from_rate, "sinc_fastest")
    return np.asarray(out, np.float32).reshape(-1)


def speak(text: str, rate: int = 16000, peak: float = 0.7) -> np.ndarray:
    """`text` spoken by hibari's bundled voice, float32 mono at `rate` (deterministic: fixed seed).

    Scaled to `peak` (about -3 dBFS by default): the level a browser microphone with automatic gain
    gives, and what the seed's absolute -30 dBFS silence threshold was tuned for. Hibari itself
    speaks near -10 dBFS, quiet enough that the threshold eats soft syllables.
    """
    audio = np.asarray(_hibari()(text, seed=0), np.float32)
    audio = audio * np.float32(peak / max(float(np.abs(audio).max()), 1e-6))
    return resample(audio, SAMPLE_RATE, rate)


def trim(audio: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Speech without the silence a TTS leaves before and after it (so its end is the last word's)."""
    loud = np.flatnonzero(np.abs(audio) > floor)
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> Path:
    """Write mono float audio as a 16-bit PCM WAV (what Chromium's fake capture plays)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return Path(path)


def decode_opus(packets: Iterable[OpusPacket | bytes]) -> np.ndarray:
    """Decode a stream of Opus packets with libopus (PyAV) to float32 mono at 48 kHz."""
    codec = av.CodecContext.create("libopus", "r")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate = 48000
    codec.layout = "mono"
    chunks: list[np.ndarray] = []
    for p in packets:
        data = p.data if isinstance(p, OpusPacket) else p
        for frame in codec.decode(av.Packet(data)):
            pcm = frame.to_ndarray()[0]  # mono: one row, planar or packed
            if np.issubdtype(pcm.dtype, np.integer):  # libopus decodes to s16 unless asked otherwise
                pcm = pcm / float(-np.iinfo(pcm.dtype).min)
            chunks.append(pcm.astype(np.float32))
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
