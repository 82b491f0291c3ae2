"""benchmarks/asr_noise.py: its word error rate counts what it should, and a small run prints its table."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from benchmarks.asr_noise import SAMPLE_RATE, edit_distance, normalise, wer
from media.speech import brown_noise
from tests.support import ROOT


def test_words_are_normalised_before_counting() -> None:
    assert normalise("What's 7 times 8? It's 56!") == "what is seven times eight it is fifty six".split()
    assert normalise("How far away is the moon?") == normalise("how far away is the Moon")
    assert normalise("Set a timer for 10 minutes.") == normalise("Set a timer for ten minutes")
    assert normalise("1,250.5 km") == "one thousand two hundred fifty point five km".split()


def test_word_error_rate_is_edits_over_reference_words() -> None:
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert edit_distance([], "a b".split()) == 2
    assert wer([("How many legs does a spider have?", "How many legs does a spider have")]) == 0
    assert wer([("How many legs does a spider have?", "How many lands does I do have?")]) == pytest.approx(300 / 7)


def test_brown_noise_has_its_level_and_its_low_frequency_tilt() -> None:
    noise = brown_noise(4 * SAMPLE_RATE, -38, seed=[1, 2])
    power = np.abs(np.fft.rfft(noise)) ** 2
    f = np.fft.rfftfreq(noise.size, 1 / SAMPLE_RATE)

    assert 20 * np.log10(np.sqrt(np.mean(noise**2))) == pytest.approx(-38, abs=0.01)
    assert abs(float(noise.mean())) < 1e-3  # no drift
    octave = power[(f >= 200) & (f < 400)].sum() / power[(f >= 400) & (f < 800)].sum()
    assert octave == pytest.approx(2, rel=0.25)  # -6 dB per octave, per octave of bandwidth: 2x the power below
    assert np.array_equal(noise, brown_noise(4 * SAMPLE_RATE, -38, seed=[1, 2]))


def test_a_small_run_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/asr_noise.py", "--sentences", "1", "--voices", "hibari", "--engines", "tiny.en,tiny.en+ns"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("engine                 clean WER%", "\ntiny.en   ", "\ntiny.en+ns   ", "does a spider have"):
        assert line in done.stdout, done.stdout
