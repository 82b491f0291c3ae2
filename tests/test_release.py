"""Push-to-talk on a busy server: the release waits for the audio the browser had sent by then (RTP
timestamps), and a press whose first audio is decoded late is not taken for silence, so a server
that decodes the microphone late never cuts a turn short or finds it empty."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np

from parley.senderclock import WRAP, SenderClock, rtp_diff
from parley.session import Session
from tests.speech import speak, trim
from tests.test_session import Page, ScriptedServices, frames, make_session, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rtp_diff_takes_the_nearest_step_across_the_wrap() -> None:
    assert rtp_diff(10, WRAP - 950) == 960
    assert rtp_diff(WRAP - 950, 10) == -960
    assert rtp_diff(5000, 4040) == 960


def test_the_position_follows_the_least_delayed_packets_through_jitter_and_a_wrap() -> None:
    clock, rng = Clock(), random.Random(7)
    sender = SenderClock(48000, clock)
    start = WRAP - 48000 * 3  # wraps three seconds in
    for i in range(500):  # ten seconds of 20 ms packets, 5 to 80 ms in transit
        clock.now = 100.0 + i * 0.02 + 0.005 + rng.random() * 0.075
        sender.observe((start + i * 960) % WRAP)
    clock.now = 100.0 + 10.0 + 0.005  # a packet sent now would take at least 5 ms
    position = sender.position_now()
    assert position is not None
    error_ms = rtp_diff(position, (start + 500 * 960) % WRAP) / 48
    assert abs(error_ms) < 3, error_ms


def test_a_sender_whose_clock_drifts_is_followed_and_a_new_stream_starts_afresh() -> None:
    clock = Clock()
    sender = SenderClock(48000, clock)
    for i in range(6000):  # two minutes from a sender 100 ppm slow
        clock.now = 100.0 + i * 0.02 * (1 + 1e-4) + 0.01
        sender.observe(i * 960)
    clock.now += 0.02 * (1 + 1e-4)
    assert abs(rtp_diff(sender.position_now() or 0, 6000 * 960) / 48) < 5, "within 5 ms after 2 minutes of drift"

    for i in range(10):  # renegotiated: a new random timestamp base
        clock.now += 0.02
        sender.observe(123_456_789 + i * 960)
    clock.now += 0.02
    assert abs(rtp_diff(sender.position_now() or 0, 123_456_789 + 10 * 960)) < 48 * 2


def rtp_frames(audio_48k: np.ndarray) -> list[av.AudioFrame]:
    """Decoded frames as aiortc gives them: timestamps counted from the first one decoded."""
    out = frames(audio_48k)
    for i, frame in enumerate(out):
        frame.pts = i * 960
        frame.time_base = Fraction(1, 48000)
    return out


async def late_microphone(session: Session, audio_48k: np.ndarray, lag_s: float) -> None:
    """Packets arrive in real time (the clock sees them), but each is decoded `lag_s` late, as on
    an ingress whose event loop is starved. Returns once every packet has arrived."""
    first = WRAP - 960 * 20  # the packets' timestamps wrap on the way
    clock = SenderClock(48000, origin=first)
    session.sender_clock = clock
    pending = rtp_frames(audio_48k)
    began = time.monotonic()

    async def decode_late() -> None:
        for i, frame in enumerate(pending):
            await asyncio.sleep(max(0.0, began + i * 0.02 + lag_s - time.monotonic()))
            session.on_audio_frame(frame)

    asyncio.get_running_loop().create_task(decode_late())
    for i in range(len(pending)):
        await asyncio.sleep(max(0.0, began + i * 0.02 - time.monotonic()))
        clock.observe((first + i * 960) % WRAP)


@functools.cache
def question() -> np.ndarray:
    return trim(speak("What is the capital of France?", rate=48000))


def answering(**limits: Any) -> tuple[ScriptedServices, Session, Page]:
    services = ScriptedServices(["Paris."])
    session, page, _ = make_session(services, **limits)
    return services, session, page


async def test_a_release_handled_before_its_audio_is_decoded_waits_for_it() -> None:
    services, session, page = answering()
    said = np.concatenate([np.zeros(4800, np.float32), question(), np.zeros(4800, np.float32)])
    await session.talk_start()
    await late_microphone(session, said, lag_s=1.0)  # none of the speech is decoded yet
    began = time.monotonic()
    await session.talk_end()
    waited = time.monotonic() - began
    await wait_until(lambda: services.transcribed == 1 or page.of("notice"))
    assert not page.of("notice"), page.of("notice")
    assert waited > 0.5, waited
    assert services.heard_s[0] >= len(question()) / 48000, (services.heard_s, len(question()) / 48000)
    await wait_until(lambda: len(services.requests) == 1)
    await session.close()


async def test_a_release_after_the_browser_stopped_sending_does_not_wait() -> None:
    services, session, _ = answering()
    await session.talk_start()
    await late_microphone(session, question(), lag_s=0.0)
    await asyncio.sleep(0.6)  # then nothing (a muted microphone sends no packets)
    began = time.monotonic()
    await session.talk_end()
    assert time.monotonic() - began < 0.5, "only the 0.1 s tail, not the wait for audio that is not coming"
    await wait_until(lambda: services.transcribed == 1)
    await session.close()


async def test_a_press_while_a_release_waits_keeps_the_new_recording() -> None:
    services, session, _ = answering()
    await session.talk_start()
    await late_microphone(session, question(), lag_s=1.5)
    release = asyncio.create_task(session.talk_end())
    await asyncio.sleep(0.1)
    assert not release.done(), "the release is waiting for the late audio"
    await session.talk_start()  # pressed again before the first release finished waiting
    await release
    assert session.recorder.listening, "the second press is still recording"
    await asyncio.sleep(1.6)
    assert services.transcribed == 0, "the first recording was dropped by the second press"
    await session.close()


async def test_a_press_after_a_long_idle_whose_audio_comes_late_is_not_taken_for_silence() -> None:
    """While nobody listens no frame is decoded, so the last decoded frame is from long ago. The
    server's 0.1 s tick must not count all that time as silence on the new recording (which ran it
    past the recording limit before its first word arrived: "I didn't hear any speech")."""
    services, session, page = answering(max_record_s=1.5)
    await asyncio.sleep(1.7)  # idle for longer than the recording limit
    await session.talk_start()
    await asyncio.sleep(0.3)  # the press's first frame is late: ticks come first
    session.tick()
    session.tick()
    await late_microphone(session, question()[: 48000 * 3 // 4], lag_s=0.0)
    await session.talk_end()
    await wait_until(lambda: services.transcribed == 1 or page.of("notice"))
    assert not page.of("notice"), page.of("notice")
    assert services.transcribed == 1
    assert not [r for r in page.of("recording") if r.get("reason")], "the recording did not reach its limit"
    await session.close()
