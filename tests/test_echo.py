"""The server's echo canceller on a synthetic echo: Parley's voice (Opus packets, as the pacing
track sends them) comes back into the microphone late, filtered and at -6 dB, over the user's own
speech. Measured on the audio itself, not on a transcript."""

from __future__ import annotations

import numpy as np
import pytest

from media.echo import DELAY, FRAME, RATE, EchoCanceller, FarEnd
from media.opus import RTP_CLOCK_HZ, SILENCE_PACKET, OpusEncoder, decode_opus_frames
from media.speech import espeak, resample, speak

PACKET = RTP_CLOCK_HZ // 50  # 20 ms


def _db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-12)


def _room(audio: np.ndarray, delay_s: float) -> np.ndarray:
    """A speaker and a room, roughly: a delay, a low-pass, two reflections, -6 dB."""
    d = round(delay_s * RATE)
    out = np.zeros(audio.size + d + 800, np.float32)
    smoothed = np.convolve(audio, np.ones(4) / 4, mode="same").astype(np.float32)
    out[d : d + audio.size] += smoothed
    out[d + 240 : d + 240 + audio.size] += 0.3 * smoothed
    out[d + 720 : d + 720 + audio.size] -= 0.15 * smoothed
    return 0.5 * out


def _run(far_audio48: np.ndarray | None, near16: np.ndarray, delay_s: float) -> tuple[np.ndarray, np.ndarray, EchoCanceller]:
    """Send `far_audio48` through a FarEnd in real-time order while the microphone (its echo plus
    `near16`) is cancelled 20 ms at a time, as packets arrive. Returns (microphone, cleaned)."""
    far = FarEnd()
    canceller = EchoCanceller(lambda: far)
    packets = []
    if far_audio48 is not None:
        encoder = OpusEncoder(48000)
        packets = [p.data for p in encoder.encode(far_audio48) + encoder.flush()]
    sent = decode_opus_frames(packets) if packets else np.zeros(0, np.float32)
    echo = _room(resample(sent, 48000, RATE), delay_s) if sent.size else np.zeros(0, np.float32)
    mic = np.zeros(max(echo.size, near16.size), np.float32)
    mic[: echo.size] += echo
    mic[: near16.size] += near16
    out = []
    step = RATE // 50
    for i in range(0, mic.size - step + 1, step):
        n = i // step
        far.sent(n * PACKET, PACKET, packets[n] if n < len(packets) else SILENCE_PACKET)
        out.append(canceller.process(mic[i : i + step]))
    cleaned = np.concatenate(out)[DELAY:]
    return mic[: cleaned.size], cleaned, canceller


@pytest.mark.parametrize("delay_s", [0.08, 0.25])
def test_the_echo_of_what_was_sent_is_removed_by_20_db_after_convergence(delay_s: float) -> None:
    voice = speak(
        "The capital of France is Paris. It has been the capital for a very long time, and it is on the Seine.", rate=48000
    )
    mic, cleaned, _ = _run(voice, np.zeros(0, np.float32), delay_s)
    after = slice(2 * RATE, mic.size)  # after two seconds of learning the path
    loud = np.abs(mic[after]) > 0.01
    removed = _db(mic[after][loud]) - _db(cleaned[after][loud])
    assert removed >= 20, f"echo down only {removed:.1f} dB"


def test_speech_over_the_echo_survives() -> None:
    voice = speak(
        "The capital of France is Paris. It has been the capital for a very long time, and it is on the Seine.", rate=48000
    )
    user = espeak("wait, stop, I have a question", rate=RATE)
    near = np.zeros(RATE * 4 + user.size, np.float32)
    near[RATE * 4 :] = user  # the user speaks after 4 s, over the answer
    _, cleaned, _ = _run(voice, near, 0.12)
    span = slice(RATE * 4, RATE * 4 + user.size)
    # What is left of the user's speech: the cleaned audio where the user spoke holds most of it.
    kept = _db(cleaned[span]) - _db(user)
    assert kept > -6, f"the user's speech lost {-kept:.1f} dB"
    # And it is the user's speech, not the echo: it correlates with what the user said.
    corr = np.dot(cleaned[span], user) / (np.linalg.norm(cleaned[span]) * np.linalg.norm(user))
    assert corr > 0.7, corr


def test_without_anything_sent_the_microphone_passes_untouched() -> None:
    user = espeak("what is the capital of France", rate=RATE)
    mic, cleaned, canceller = _run(None, user, 0.1)
    assert canceller.cancelled == 0
    assert np.array_equal(cleaned, mic)


def test_any_chunking_gives_the_same_stream() -> None:
    far = FarEnd()
    canceller = EchoCanceller(lambda: far)
    audio = np.random.default_rng(0).normal(0, 0.05, RATE).astype(np.float32)
    sizes = [1, 7, 160, 333, 2, 5000]
    out, i = [], 0
    for size in sizes * 10:
        if i >= audio.size:
            break
        out.append(canceller.process(audio[i : i + size]))
        i += size
    joined = np.concatenate(out)
    assert joined.size == (min(i, audio.size) // FRAME) * FRAME
    assert np.array_equal(joined, np.concatenate((np.zeros(DELAY, np.float32), audio))[: joined.size])


def test_switching_between_cancelling_and_passing_keeps_the_stream_whole() -> None:
    """Sound sent, then a long silence (frames pass untouched), then sound again: the microphone
    stream comes out DELAY late, with no sample lost or repeated at either switch."""
    far = FarEnd()
    canceller = EchoCanceller(lambda: far)
    encoder = OpusEncoder(48000)
    tone = 0.3 * np.sin(np.arange(48000 * 0.5) * 2 * np.pi * 300 / 48000).astype(np.float32)
    packets = [p.data for p in encoder.encode(tone) + encoder.flush()]
    sequence = packets + [SILENCE_PACKET] * 150 + packets  # 0.5 s of sound, 3 s quiet, sound
    mic = np.random.default_rng(3).normal(0, 0.01, len(sequence) * 320).astype(np.float32)
    out = []
    for n, data in enumerate(sequence):
        far.sent(n * PACKET, PACKET, data)
        out.append(canceller.process(mic[n * 320 : (n + 1) * 320]))
    cleaned = np.concatenate(out)[DELAY:]
    assert 0 < canceller.cancelled < canceller.frames
    # No echo in this microphone: what AEC3 ran on went on as it came (nothing alike to what was
    # sent), so the whole stream comes out exactly as it went in, DELAY late: nothing lost or
    # repeated at either switch, and the samples AEC3 still held from before are not replayed.
    assert canceller.cancelled - canceller.passed <= 3  # the first 32 ms cannot be compared yet
    assert np.array_equal(cleaned[960:], mic[960 : cleaned.size])


def test_the_users_voice_with_no_echo_goes_on_untouched_while_parley_talks() -> None:
    """A headset: Parley talks, nothing comes back, the user speaks. AEC3, not yet sure that
    nothing comes back, would take the user for echo; the canceller passes them on as they are."""
    voice = speak("The capital of France is Paris. It has been the capital for a very long time.", rate=48000)
    user = espeak("what is the capital of France", rate=RATE)
    near = np.zeros(RATE + user.size, np.float32)
    near[RATE:] = user
    far = FarEnd()
    canceller = EchoCanceller(lambda: far)
    encoder = OpusEncoder(48000)
    packets = [p.data for p in encoder.encode(voice) + encoder.flush()]
    out = []
    for n in range(near.size // 320):
        far.sent(n * PACKET, PACKET, packets[n % len(packets)])
        out.append(canceller.process(near[n * 320 : (n + 1) * 320]))
    cleaned = np.concatenate(out)[DELAY:]
    span = slice(RATE, cleaned.size)
    assert canceller.cancelled > 0
    assert _db(cleaned[span]) - _db(near[span]) > -1.0, "the user's voice kept its level"
