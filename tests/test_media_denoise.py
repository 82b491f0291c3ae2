"""Streaming noise suppression (media/denoise.py): quieter noise, speech kept, any chunking, aligned."""

from __future__ import annotations

import numpy as np
import pytest

from media.denoise import DELAY, Denoiser, denoise
from media.speech import brown_noise, speak, trim

RATE = 16000
LEAD_S = 1.5
"""Noise before the speech: the suppressor learns it in the first part, the rest is measured."""


def db(audio: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(audio, dtype=np.float64))))


@pytest.fixture(scope="module")
def question() -> tuple[np.ndarray, np.ndarray, slice]:
    """(speech over brown noise at -38 dBFS, the speech alone at the same place, where the speech is)."""
    speech = trim(speak("How many legs does a spider have?"))
    lead = round(LEAD_S * RATE)
    dry = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(RATE // 2, np.float32)])
    return dry + brown_noise(dry.size, -38), dry, slice(lead, lead + speech.size)


def stream(denoiser: Denoiser, audio: np.ndarray, chunk: int) -> np.ndarray:
    """`audio` through `denoiser` in chunks of `chunk`, realigned: as long as `audio`, sample for sample."""
    out = [denoiser.process(audio[i : i + chunk]) for i in range(0, audio.size, chunk)]
    for piece, start in zip(out, range(0, audio.size, chunk), strict=True):
        assert piece.size == min(chunk, audio.size - start) and piece.dtype == np.float32
    return np.concatenate([*out, denoiser.flush()])[DELAY : DELAY + audio.size]


def test_brown_noise_is_quieter_and_speech_keeps_its_energy(question: tuple[np.ndarray, np.ndarray, slice]) -> None:
    noisy, dry, speech = question
    cleaned = stream(Denoiser(level=2), noisy, 320)  # the microphone's 20 ms packets
    quiet = slice(RATE // 2, speech.start)  # speech-free, after the first 0.5 s it learns in

    assert db(noisy[quiet]) == pytest.approx(-38, abs=1.5)
    assert db(noisy[quiet]) - db(cleaned[quiet]) > 10, "the noise floor fell by less than 10 dB"
    assert db(cleaned[speech]) - db(dry[speech]) > -1, "the speech lost more than 1 dB"
    assert db(cleaned[speech] - dry[speech]) < db(noisy[speech] - dry[speech]), "the speech is no closer to the clean one"


def test_speech_after_digital_silence_is_not_suppressed(question: tuple[np.ndarray, np.ndarray, slice]) -> None:
    """Exact zeros (a filled gap, a synthetic clip) broke WebRTC's noise estimate: the speech after lost 10-15 dB."""
    _, dry, speech = question
    cleaned = stream(Denoiser(level=2), dry, 320)

    for start in range(speech.start, speech.stop - 1600, 1600):  # every 100 ms of the speech
        piece = slice(start, start + 1600)
        assert db(cleaned[piece]) - db(dry[piece]) > -1.5, f"{(start - speech.start) / RATE:.1f} s into the speech"


def test_any_chunking_gives_the_same_stream(question: tuple[np.ndarray, np.ndarray, slice]) -> None:
    noisy = question[0][: 2 * RATE]
    whole = stream(Denoiser(), noisy, noisy.size)

    for chunk in (1, 7, 160, 333, 4000):
        assert np.array_equal(stream(Denoiser(), noisy, chunk), whole), chunk


def test_the_cleaned_clip_is_aligned_with_the_input(question: tuple[np.ndarray, np.ndarray, slice]) -> None:
    noisy, dry, speech = question
    cleaned = denoise(noisy)
    inner = slice(speech.start + 400, speech.stop - 400)
    lags = range(-200, 201)
    best = max(lags, key=lambda lag: float(np.dot(dry[inner], cleaned[inner.start + lag : inner.stop + lag])))

    assert cleaned.size == noisy.size
    assert best == 0


def test_a_warm_suppressor_cleans_from_the_first_sample(question: tuple[np.ndarray, np.ndarray, slice]) -> None:
    noisy, _, speech = question
    lead, clip = noisy[: speech.start - 4800], noisy[speech.start - 4800 :]  # the clip keeps 0.3 s before the speech

    warm = denoise(clip, lead_in=lead)
    cold = denoise(clip)
    first = slice(0, 4800)
    assert db(clip[first]) - db(warm[first]) > 10
    assert db(warm[first]) < db(cold[first])


def test_reset_forgets_the_stream(question: tuple[np.ndarray, np.ndarray, slice]) -> None:
    noisy = question[0][:RATE]
    used = Denoiser()
    used.process(noisy[::-1].copy())
    used.process(noisy[:1234])
    used.reset()

    assert np.array_equal(stream(used, noisy, 320), stream(Denoiser(), noisy, 320))


def test_levels_outside_webrtcs_are_refused() -> None:
    with pytest.raises(ValueError, match="level"):
        Denoiser(level=4)
