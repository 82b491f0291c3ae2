"""Opus encoding and TOC durations: what the pacing track and the browser's decoder rely on."""

from __future__ import annotations

import numpy as np
import pytest

from media.opus import RTP_CLOCK_HZ, SILENCE_PACKET, OpusEncoder, toc_duration_samples
from tests.support.speech import decode_opus, resample


def sweep(rate: int, seconds: float = 1.0) -> np.ndarray:
    """A 200 Hz -> 2 kHz sweep: unlike a steady tone, it lines up with itself at only one lag."""
    t = np.arange(int(rate * seconds)) / rate
    f0, f1 = 200.0, 2000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return (0.4 * np.sin(phase)).astype(np.float32)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def best_correlation(decoded: np.ndarray, reference: np.ndarray, max_lag: int = 2000) -> float:
    """Highest normalised correlation of `reference` against `decoded` delayed by 0..max_lag samples."""
    best = 0.0
    for lag in range(max_lag):
        seg = decoded[lag : lag + reference.size]
        if seg.size < reference.size:
            break
        c = float(np.dot(seg, reference) / (np.linalg.norm(seg) * np.linalg.norm(reference) + 1e-12))
        best = max(best, c)
    return best


def test_silence_packet_is_20_ms_and_decodes_to_silence() -> None:
    assert toc_duration_samples(SILENCE_PACKET) == 960
    audio = decode_opus([SILENCE_PACKET] * 3)
    assert audio.size == 3 * 960
    assert np.abs(audio).max() < 1e-3


@pytest.mark.parametrize("rate", [48000, 24000, 16000, 44100])
def test_encoded_sweep_decodes_to_the_same_audio(rate: int) -> None:
    source = sweep(rate)
    encoder = OpusEncoder(rate)
    packets = []
    for start in range(0, source.size, 1234):  # uneven chunks exercise the remainder buffer
        packets += encoder.encode(source[start : start + 1234])
    packets += encoder.flush()

    assert all(p.samples == 960 for p in packets)
    assert sum(p.samples for p in packets) == len(packets) * 960
    decoded = decode_opus(packets)
    expected = source.size * RTP_CLOCK_HZ / rate
    assert abs(decoded.size - expected) <= 2 * 960  # the padded last frame plus the encoder's lookahead
    assert best_correlation(decoded, resample(source, rate, RTP_CLOCK_HZ)) > 0.9
    assert rms(decoded) == pytest.approx(rms(source), rel=0.2)  # not just the shape: the loudness too


def test_encoder_starts_a_fresh_stream_after_flush() -> None:
    encoder = OpusEncoder(48000)
    first = encoder.encode(sweep(48000, 0.1)) + encoder.flush()
    second = encoder.encode(sweep(48000, 0.1)) + encoder.flush()
    assert len(first) == len(second) > 0
    assert encoder.flush() == []


def test_encoder_rejects_non_float_or_multichannel_pcm() -> None:
    encoder = OpusEncoder(16000)
    with pytest.raises(ValueError):
        encoder.encode(np.zeros(320, np.int16))
    with pytest.raises(ValueError):
        encoder.encode(np.zeros((2, 320), np.float32))
    assert encoder.encode(np.zeros(0, np.float32)) == []


@pytest.mark.parametrize("frame_ms,samples", [(10, 480), (20, 960), (40, 1920), (60, 2880)])
def test_toc_duration_of_encoded_packets(frame_ms: int, samples: int) -> None:
    encoder = OpusEncoder(48000, frame_ms=frame_ms)
    packets = encoder.encode(sweep(48000, 0.5)) + encoder.flush()
    assert packets
    assert {toc_duration_samples(p.data) for p in packets} == {samples}
    assert {p.samples for p in packets} == {samples}


@pytest.mark.parametrize(
    "packet,samples",
    [
        (bytes([0b00001_0_01, 0, 0]), 2 * 960),  # code 1: SILK NB 20 ms, two equal frames
        (bytes([0b00000_0_10, 1, 0, 0]), 2 * 480),  # code 2: SILK NB 10 ms, two frames of different size
        (bytes([0b11111_0_11, 0b00000011, 0, 0, 0]), 3 * 960),  # code 3: CELT FB 20 ms, count 3 (CBR)
        (bytes([0b10000_0_11, 0b11000101, 5]), 5 * 120),  # code 3: CELT NB 2.5 ms, VBR + padding flags, count 5
        (bytes([0b01101_1_00]), 960),  # hybrid SWB 20 ms, stereo flag does not change duration
    ],
)
def test_toc_duration_of_hand_made_packets(packet: bytes, samples: int) -> None:
    assert toc_duration_samples(packet) == samples


@pytest.mark.parametrize(
    "packet",
    [
        b"",  # no TOC byte
        bytes([0b11111_0_11]),  # code 3 without its count byte
        bytes([0b11111_0_11, 0]),  # code 3 with zero frames
        bytes([0b00011_0_11, 3]),  # 3 x 60 ms = 180 ms, over the 120 ms limit
    ],
)
def test_toc_duration_rejects_malformed_packets(packet: bytes) -> None:
    with pytest.raises(ValueError):
        toc_duration_samples(packet)
