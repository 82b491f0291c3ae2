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


def speak(text: str, rate: int = 16000, peak: float = 0.7, speed: float = 1.0) -> np.ndarray:
    """`text` spoken by hibari's bundled voice, float32 mono at `rate` (deterministic: fixed seed),
    at `speed` times its own pace.

    Scaled to `peak` (about -3 dBFS by default): the level a browser microphone with automatic gain
    gives, and what the seed's absolute -30 dBFS silence threshold was tuned for. Hibari itself
    speaks near -10 dBFS, quiet enough that the threshold eats soft syllables.
    """
    audio = np.asarray(_hibari()(text, speed=speed, seed=0), np.float32)
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


BABBLE_LINES = (
    "I think we should leave before the traffic gets any worse tonight",
    "she told me the meeting was moved to Thursday afternoon",
    "have you seen the new place on the corner by the station",
    "we bought far too much bread again this week",
    "the kids were up early because of the thunder",
    "my brother is driving down from the north on Sunday",
)
BABBLE_VOICES = ("en-us+m2", "en-gb+f2", "en-us+f4", "en-gb-x-rp+m6", "en+klatt2")


def _level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    return (audio * 10 ** (dbfs / 20) / max(float(np.sqrt(np.mean(audio**2))), 1e-9)).astype(np.float32)


@functools.cache
def _babble_talker(index: int, rate: int) -> np.ndarray:
    lines = [espeak(line, rate, BABBLE_VOICES[index % len(BABBLE_VOICES)], speed=150 + 10 * index)
             for line in BABBLE_LINES[index % 2 :: 2]]  # fmt: skip
    gap = np.zeros(rate // 4, np.float32)
    return np.concatenate([part for line in lines for part in (trim(line), gap)])


def babble(samples: int, dbfs: float, seed: int | list[int] = 0, rate: int = 16000, talkers: int = 5) -> np.ndarray:
    """A room of people talking at once (espeak-ng voices, each looping its own lines from a random
    point), float32 at `dbfs` RMS; the same seed gives the same babble. Needs espeak-ng."""
    rng = np.random.default_rng(seed)
    out = np.zeros(samples, np.float32)
    for index in range(talkers):
        talker = _babble_talker(index, rate)
        start = int(rng.integers(talker.size))
        looped = np.tile(talker, samples // talker.size + 2)[start : start + samples]
        out += looped * np.float32(rng.uniform(0.6, 1.0))
    return _level(out, dbfs)


def music(samples: int, dbfs: float, seed: int | list[int] = 0, rate: int = 16000) -> np.ndarray:
    """Music made here: plucked-string chords over a bass line with a melody on top (four chords a
    bar at 100 beats a minute, random notes from each chord), float32 at `dbfs` RMS; the same seed
    gives the same piece."""
    rng = np.random.default_rng(seed)
    beat = int(rate * 60 / 100)
    chords = ((0, 4, 7), (9, 12, 16), (5, 9, 12), (7, 11, 14))  # I vi IV V
    root = 220.0 * 2 ** (int(rng.integers(0, 12)) / 12)
    out = np.zeros(samples + 6 * beat, np.float32)
    t = np.arange(2 * beat) / rate

    def pluck(freq: float, at: int, gain: float) -> None:
        tone = sum(np.sin(2 * np.pi * freq * h * t) / h**1.5 for h in range(1, 6)) * np.exp(-t * 4.0)
        out[at : at + tone.size] += (gain * tone).astype(np.float32)

    for bar, at in enumerate(range(0, samples, 4 * beat)):
        chord = chords[(bar + int(rng.integers(0, 4))) % len(chords)]
        pluck(root / 2 * 2 ** (chord[0] / 12), at, 0.8)
        for n in range(4):
            for step in chord:
                pluck(root * 2 ** (step / 12), at + n * beat, 0.25)
            pluck(root * 2 * 2 ** (int(rng.choice(chord)) / 12), at + n * beat + beat // 2, 0.4)
    return _level(out[:samples], dbfs)
