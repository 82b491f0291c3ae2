"""Test helpers that make and read speech audio: hibari speech, 16-bit WAVs and Opus decoding.

Invariant: every array these helpers return is 1-D float32 mono in [-1, 1] at the rate named by
the caller, so tests compare audio without caring which engine made it.
"""

from __future__ import annotations

import wave
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

from media.packet import OpusPacket
from media.speech import resample, speak, trim

__all__ = ["decode_opus", "resample", "speak", "split_at", "trim", "write_wav"]


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


def split_at(first: str, rest: str, rate: int = 48000) -> tuple[np.ndarray, int]:
    """`first rest` spoken as one sentence (hibari, trimmed), and the sample where `first` ends in
    it: the quietest 10 ms near where `first` alone would end. Cutting there keeps the intonation of
    a sentence that goes on (speaking `first` alone would end it like a finished sentence)."""
    full = trim(speak(f"{first} {rest}", rate=rate))
    alone = len(trim(speak(first, rate=rate)))
    hop = rate // 100
    energy = np.convolve(full**2, np.ones(hop) / hop, mode="same")
    lo, hi = max(hop, alone - round(0.3 * rate)), min(len(full) - hop, alone + round(0.1 * rate))
    return full, lo + int(np.argmin(energy[lo:hi:hop])) * hop
