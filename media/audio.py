"""Cleaning up one recording from the browser's microphone before it goes to the ASR.

Invariant: `normalize` either returns None (nothing worth transcribing) or 1-D float32 mono audio
at `WHISPER_RATE` in [-1, 1], with the long pauses cut out, lasting at least `min_speech_s`.
The silence settings are the seed's (catid/aiwebcam2), tuned so an accidental key tap gives None.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import samplerate

# pydub warns at import when ffmpeg is missing; raw PCM in and out never needs it.
warnings.filterwarnings("ignore", message="Couldn't find ffmpeg", category=RuntimeWarning)
from pydub import AudioSegment  # noqa: E402
from pydub.silence import split_on_silence  # noqa: E402

WHISPER_RATE = 16000
"""The sample rate every Whisper model expects."""

MIN_SILENCE_MS = 500
"""A pause must last this long to be cut out."""
SILENCE_THRESH_DBFS = -30
"""Anything quieter than this (absolute, not relative to the recording) counts as silence."""
KEEP_SILENCE_MS = 300
"""Silence kept either side of speech, so words are not clipped."""
SEEK_STEP_MS = 20
"""Granularity of the silence search; 20 ms keeps it cheap."""
FAST_RESAMPLE_ABOVE = 100_000
"""Recordings longer than this many input samples use the fast sinc resampler."""

_INT16_SCALE = 32768.0


def _to_mono(chunk: np.ndarray, channels: int) -> np.ndarray:
    """One PCM chunk as 1-D float64 mono, in the chunk's own units (int16 counts or [-1, 1])."""
    a = np.asarray(chunk)
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]  # packed formats: (1, samples * channels), interleaved
    if a.ndim == 1:
        if channels > 1:
            if a.size % channels:
                raise ValueError(f"interleaved chunk of {a.size} values does not split into {channels} channels")
            return a.reshape(-1, channels).mean(axis=1, dtype=np.float64)
        return a.astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"PCM chunk must be 1-D or 2-D, got shape {a.shape}")
    if a.shape[1] in (1, channels):
        return a.mean(axis=1, dtype=np.float64)  # (samples, channels)
    if a.shape[0] == channels:
        return a.mean(axis=0, dtype=np.float64)  # planar: (channels, samples)
    raise ValueError(f"cannot read shape {a.shape} as {channels}-channel PCM")


def to_float_mono(chunk: np.ndarray, channels: int) -> np.ndarray:
    """One decoded PCM chunk (int16 or float, any layout `normalize` accepts) as float32 mono in [-1, 1]."""
    mono = _to_mono(chunk, channels)
    if np.issubdtype(np.asarray(chunk).dtype, np.integer):
        mono = mono / (np.iinfo(np.asarray(chunk).dtype).max + 1)
    return mono.astype(np.float32)


def _to_int16(mono: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Mono samples as int16, the only width pydub's silence search is used with here."""
    if np.issubdtype(dtype, np.floating):
        scaled = mono * (_INT16_SCALE - 1)
    elif np.issubdtype(dtype, np.integer):
        scaled = mono * (_INT16_SCALE / (np.iinfo(dtype).max + 1))
    else:
        raise ValueError(f"PCM must be integer or float, got {dtype}")
    return np.clip(np.rint(scaled), -_INT16_SCALE, _INT16_SCALE - 1).astype(np.int16)


def normalize(
    chunks: Sequence[np.ndarray],
    channels: int,
    sample_rate: int,
    *,
    min_speech_s: float = 0.5,
) -> np.ndarray | None:
    """One recording as Whisper input: mono, pauses removed, float32 at 16 kHz; None if too short.

    `chunks` are PCM arrays as `av.AudioFrame.to_ndarray()` gives them (packed `(1, n*channels)`,
    planar `(channels, n)`, `(n,)`, `(n, 1)` or `(n, 2)`), int16 or float in [-1, 1], all with the
    same `channels` and `sample_rate`. Stereo is averaged to mono. Returns None when nothing is
    louder than the silence threshold or less than `min_speech_s` seconds are left after trimming.
    """
    if channels < 1 or sample_rate < 1:
        raise ValueError(f"need channels >= 1 and sample_rate >= 1, got {channels} and {sample_rate}")
    parts = [_to_int16(_to_mono(c, channels), np.asarray(c).dtype) for c in chunks if np.asarray(c).size]
    if not parts:
        return None
    pcm = np.concatenate(parts)
    sound = AudioSegment(data=pcm.tobytes(), sample_width=2, frame_rate=sample_rate, channels=1)
    pieces = split_on_silence(
        sound,
        min_silence_len=MIN_SILENCE_MS,
        silence_thresh=SILENCE_THRESH_DBFS,
        keep_silence=KEEP_SILENCE_MS,
        seek_step=SEEK_STEP_MS,
    )
    if not pieces:
        return None
    kept = np.frombuffer(b"".join(p.raw_data for p in pieces), dtype=np.int16)
    audio = kept.astype(np.float32) / np.float32(_INT16_SCALE)
    if sample_rate != WHISPER_RATE:
        converter = "sinc_fastest" if audio.size > FAST_RESAMPLE_ABOVE else "sinc_best"
        resampled = samplerate.resample(audio, WHISPER_RATE / sample_rate, converter)
        audio = np.clip(np.asarray(resampled, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if audio.size < min_speech_s * WHISPER_RATE:
        return None
    return audio


def trim_edges(
    audio: np.ndarray, sample_rate: int, *, lead_s: float = 0.03, tail_s: float = 0.15, floor: float = 0.02
) -> np.ndarray:
    """Cut a synthesized sentence's leading and trailing silence down to `lead_s` and `tail_s`.

    Silence is anything quieter than `floor` times the clip's peak. TTS engines pad each sentence
    with ~0.3 s before and ~0.45 s after: at the start of an answer that is pure added latency,
    and between sentences it makes unnatural gaps.
    """
    if audio.size == 0:
        return audio
    loud = np.flatnonzero(np.abs(audio) > floor * float(np.abs(audio).max()))
    if loud.size == 0:
        return audio[:0]
    start = max(0, int(loud[0]) - int(lead_s * sample_rate))
    end = min(audio.size, int(loud[-1]) + 1 + int(tail_s * sample_rate))
    return audio[start:end]
