"""normalize: what the ASR gets from one press of the talk key."""

from __future__ import annotations

import av
import numpy as np
import pytest

from media.audio import WHISPER_RATE, normalize, trim_edges

RATE = 48000


def db_to_amplitude(dbfs: float) -> float:
    """Peak amplitude (full scale 1.0) of a sine whose RMS is `dbfs` (pydub measures RMS)."""
    return float(np.sqrt(2) * 10 ** (dbfs / 20))


def speech_like(seconds: float, dbfs: float = -10.0, rate: int = RATE) -> np.ndarray:
    """A 220 Hz tone with a 4 Hz syllable-rate envelope, float32 in [-1, 1]."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.75 + 0.25 * np.sin(2 * np.pi * 4 * t)
    return (db_to_amplitude(dbfs) * envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def to_int16(audio: np.ndarray) -> np.ndarray:
    return (audio * 32767).astype(np.int16)


def frames_of(audio: np.ndarray, size: int = 960) -> list[np.ndarray]:
    """Split audio into 20 ms chunks, as the recorder collects them from aiortc."""
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def dominant_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


def test_long_pauses_are_cut_and_the_speech_kept() -> None:
    gap = silence(1.5)
    word = speech_like(1.0)
    recording = np.concatenate([gap, word, gap, word, gap, word, gap])  # 9 s, 3 s of speech

    out = normalize(frames_of(to_int16(recording)), channels=1, sample_rate=RATE)

    assert out is not None
    assert out.dtype == np.float32 and out.ndim == 1
    seconds = len(out) / WHISPER_RATE
    # Each word keeps 300 ms of silence either side: 3 * 1.6 s, far less than the 9 s recorded.
    assert seconds == pytest.approx(4.8, abs=0.1)
    assert np.abs(out).max() <= 1.0
    assert dominant_hz(out, WHISPER_RATE) == pytest.approx(220, abs=2)


def test_stereo_frames_from_aiortc_become_mono_of_the_right_length() -> None:
    left = to_int16(speech_like(2.0))
    right = to_int16(speech_like(2.0, dbfs=-14.0))
    chunks = []
    for i in range(0, len(left), 960):
        interleaved = np.stack([left[i : i + 960], right[i : i + 960]], axis=1).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout="stereo")
        frame.sample_rate = RATE
        chunks.append(frame.to_ndarray())
    assert chunks[0].shape == (1, 1920)  # packed: samples of both channels interleaved in one row

    out = normalize(chunks, channels=2, sample_rate=RATE)

    assert out is not None
    assert len(out) == pytest.approx(2.0 * WHISPER_RATE, abs=16)
    # Read as mono by mistake, the tone would drop an octave (and the clip double in length).
    assert dominant_hz(out, WHISPER_RATE) == pytest.approx(220, abs=2)


@pytest.mark.parametrize("shape", ["flat", "column", "packed"])
def test_float_input_of_any_shape_is_accepted(shape: str) -> None:
    audio = speech_like(1.0)
    chunks = frames_of(audio)
    if shape == "column":
        chunks = [c[:, None] for c in chunks]
    elif shape == "packed":
        chunks = [c[None, :] for c in chunks]

    out = normalize(chunks, channels=1, sample_rate=RATE)

    assert out is not None
    assert len(out) == pytest.approx(WHISPER_RATE, abs=16)
    # Float in, float out at the same level: no int16 scaling left over.
    assert np.abs(out).max() == pytest.approx(np.abs(audio).max(), rel=0.05)


def test_planar_stereo_float_is_averaged() -> None:
    tone = speech_like(1.0)
    planar = np.stack([tone, -tone])  # (2, n): the channels cancel when averaged

    assert normalize([planar], channels=2, sample_rate=RATE) is None


def test_already_16khz_audio_is_not_resampled() -> None:
    audio = speech_like(1.0, rate=WHISPER_RATE)

    out = normalize([audio], channels=1, sample_rate=WHISPER_RATE)

    assert out is not None
    np.testing.assert_allclose(out, audio, atol=1 / 16384)


def test_an_accidental_key_tap_gives_nothing() -> None:
    assert normalize(frames_of(to_int16(speech_like(0.3))), channels=1, sample_rate=RATE) is None


def test_speech_shorter_than_the_minimum_gives_nothing() -> None:
    recording = np.concatenate([silence(1.0), speech_like(0.6), silence(1.0)])  # 1.2 s with padding

    assert normalize([recording], channels=1, sample_rate=RATE, min_speech_s=1.5) is None
    assert normalize([recording], channels=1, sample_rate=RATE, min_speech_s=1.0) is not None


def test_silence_and_quiet_room_noise_give_nothing() -> None:
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(3 * RATE) * 10 ** (-50 / 20)).astype(np.float32)  # -50 dBFS RMS

    assert normalize(frames_of(to_int16(silence(3.0))), channels=1, sample_rate=RATE) is None
    assert normalize(frames_of(noise), channels=1, sample_rate=RATE) is None


def test_no_chunks_gives_nothing() -> None:
    assert normalize([], channels=1, sample_rate=RATE) is None
    assert normalize([np.zeros(0, np.int16)], channels=2, sample_rate=RATE) is None


def test_long_recordings_use_the_fast_resampler_and_keep_their_length() -> None:
    audio = speech_like(5.0)  # 240000 samples at 48 kHz: above the fast-resampler threshold

    out = normalize(frames_of(audio), channels=1, sample_rate=RATE)

    assert out is not None
    assert len(out) == pytest.approx(5.0 * WHISPER_RATE, abs=16)
    assert dominant_hz(out, WHISPER_RATE) == pytest.approx(220, abs=1)


def test_chunks_that_do_not_match_the_channel_count_are_rejected() -> None:
    with pytest.raises(ValueError, match="channels"):
        normalize([np.zeros(961, np.int16)], channels=2, sample_rate=RATE)


def test_trim_edges_cuts_tts_padding_to_a_short_lead_and_tail() -> None:
    rate = 24000
    tone = (0.5 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype(np.float32)
    padded = np.concatenate([np.zeros(int(0.3 * rate), np.float32), tone, np.zeros(int(0.45 * rate), np.float32)])
    trimmed = trim_edges(padded, rate, lead_s=0.03, tail_s=0.15)
    assert abs(trimmed.size / rate - (1.0 + 0.03 + 0.15)) < 0.01
    assert np.abs(trimmed[: int(0.03 * rate) - 10]).max() == 0, "only the kept lead is silent"
    assert trim_edges(np.zeros(100, np.float32), rate).size == 0
