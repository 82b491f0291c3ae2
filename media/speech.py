"""Speech made on demand by hibari's bundled voice (and, for a second voice, Debian's espeak-ng),
and a fan-like noise to put under it: questions for the load client, the benchmarks and the tests.

Invariant: every array returned is 1-D float32 mono in [-1, 1] at the rate the caller names, and
the same text always gives the same samples (a fixed seed; espeak-ng is deterministic).
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave

import numpy as np
import samplerate
from hibari import SAMPLE_RATE, Hibari


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


def espeak(text: str, rate: int = 16000, voice: str = "en-us", peak: float = 0.7, speed: int | None = None) -> np.ndarray:
    """`text` spoken by espeak-ng (Debian's `espeak-ng`), float32 mono at `rate`, scaled to `peak`
    like `speak`. `voice` is an espeak-ng voice (`en-us`, `en-gb+m3`, `en-us+f2`, ...); `speed` in
    words a minute (None: espeak-ng's own, 175). FileNotFoundError if espeak-ng is not installed."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise FileNotFoundError("espeak-ng is not installed (apt install espeak-ng)")
    pace = ["-s", str(speed)] if speed is not None else []
    out = subprocess.run([binary, "-v", voice, *pace, "--stdout", text], capture_output=True, check=True, timeout=30)
    with wave.open(io.BytesIO(out.stdout)) as w:
        native = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    pcm = pcm * np.float32(peak / max(float(np.abs(pcm).max()), 1e-6))
    return resample(pcm, native, rate)


def brown_noise(samples: int, dbfs: float, seed: int | list[int] = 0, rate: int = 16000) -> np.ndarray:
    """A fan-like noise floor: white noise through a leaky integrator (1/f in amplitude above a
    15 Hz corner, so it does not drift), float32 at `dbfs` RMS; the same seed gives the same noise."""
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(samples))
    spectrum *= 1 / (15.0 + 1j * np.fft.rfftfreq(samples, 1 / rate))
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, samples)
    return (noise * 10 ** (dbfs / 20) / np.sqrt(np.mean(noise**2))).astype(np.float32)
