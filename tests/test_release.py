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

from parley.engine.session import Session
from parley.ingress.senderclock import SLACK_S, WRAP, SenderClock, rtp_diff
from tests.support.clock import FakeClock
from tests.support.fake_services import Page, ScriptedServices, frames, make_session, wait_until
from tests.support.speech import speak, trim


def test_rtp_diff_takes_the_nearest_step_across_the_wrap() -> None:
    assert rtp_diff(10, WRAP - 950) == 960
    assert rtp_diff(WRAP - 950, 10) == -960
    assert rtp_diff(5000, 4040) == 960


def test_the_position_follows_the_least_delayed_packets_through_jitter_and_a_wrap() -> None:
    clock, rng = FakeClock(100.0), random.Random(7)
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
    clock = FakeClock(100.0)
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


# -- the release's wait under fake time: only audio on its way is waited for ---------------------


class Microphone:
    """A sender of 20 ms packets over a jittery path, decoded `lag_s` after each arrives.

    Packet i carries audio [20 i, 20 (i + 1)) ms, is sent when that audio is done, arrives 10-90 ms
    later and reaches the recorder `lag_s` after that; `heard` is where the decoded audio ends
    (RTP ticks from the first packet), as the recorder reports it."""

    def __init__(self, time: FakeClock, *, lag_s: float, seed: int = 3) -> None:
        self.time, self.lag_s, self.rng = time, lag_s, random.Random(seed)
        self.first = WRAP - 960 * 30  # the timestamps wrap on the way
        self.clock = SenderClock(48000, time, origin=self.first, sleep=time.sleep)
        self.heard: int | None = None

    def send(self, from_s: float, to_s: float, *, stood_still_s: float = 0.0, lost: frozenset[int] = frozenset()) -> None:
        """The sender sends the audio of [from_s, to_s) (seconds after time 100); its timestamps
        are `stood_still_s` behind (a sender whose clock stood still while it sent nothing); the
        packets numbered in `lost` never arrive (the packet after a lost one brings its audio, as
        the microphone's buffer fills the hole)."""
        for i in range(round(from_s / 0.02), round(to_s / 0.02)):
            if i in lost:
                continue
            arrival = 100.0 + (i + 1) * 0.02 + 0.01 + self.rng.random() * 0.08
            timestamp = (self.first + i * 960 - round(stood_still_s * 48000)) % WRAP
            self.time.at(arrival, lambda ts=timestamp: self.clock.observe(ts))
            self.time.at(arrival + self.lag_s, lambda end=(i + 1) * 960: self._decoded(end))

    def _decoded(self, end: int) -> None:  # the decoder's timestamps count as the sender's do
        self.heard = end if self.heard is None else max(self.heard, end)

    async def release_at(self, at_s: float, limit_s: float = 2.0) -> float:
        """The key comes up at `at_s`: the seconds the release waits."""
        self.time.run_until(100.0 + at_s)
        return await self.clock.catch_up(lambda: self.heard, limit_s=limit_s)

    def heard_s(self) -> float:
        return (self.heard or 0) / 48000


async def test_a_release_after_the_sender_went_quiet_does_not_wait() -> None:
    """Chromium's WebAudio microphone sends nothing while it is silent: speech ended (and the
    packets with it) 0.28 s before the release, and no audio is on its way."""
    mic = Microphone(FakeClock(100.0), lag_s=0.0)
    mic.send(0.0, 1.0)
    waited = await mic.release_at(1.28)
    assert waited <= 0.02, f"waited {waited:.2f} s for audio that was never sent"
    assert mic.heard_s() == 1.0


async def test_a_release_on_a_lossy_link_waits_for_no_packet_that_will_never_come() -> None:
    """10 % of packets lost, the two just before the key comes up among them: a sender still
    sending is waited for only until its next packet (which brings the lost audio, repaired); one
    whose last packets were lost and then went quiet is not waited for at all."""
    rng = random.Random(11)
    lost = frozenset({i for i in range(100) if rng.random() < 0.1} | {73, 74})
    mic = Microphone(FakeClock(100.0), lag_s=0.0)
    mic.send(0.0, 2.0, lost=lost)
    waited = await mic.release_at(1.5)
    assert waited < 0.15, f"waited {waited:.2f} s on a lossy link"
    assert mic.heard_s() >= 1.5 - SLACK_S - 0.02, "the audio up to the release is on the tape"
    quiet = Microphone(FakeClock(100.0), lag_s=0.0)
    quiet.send(0.0, 1.0, lost=frozenset({47, 48, 49}))
    waited = await quiet.release_at(1.28)
    assert waited <= 0.02, f"waited {waited:.2f} s for packets that were lost"
    assert quiet.heard_s() == 0.94


async def test_a_sender_that_stops_during_the_wait_ends_it() -> None:
    """The sender still counts as sending when the key comes up (its last packet is not yet
    overdue), then stops: the wait ends once what it did send is decoded."""
    mic = Microphone(FakeClock(100.0), lag_s=0.05)
    mic.send(0.0, 1.0)
    mic.time.run_until(101.12)
    assert mic.clock.sending(), "the sender had not gone quiet yet when the key came up"
    waited = await mic.release_at(1.12)
    assert waited < 0.3, f"waited {waited:.2f} s: the wait did not notice the sender had stopped"
    assert mic.heard_s() == 1.0, "what the sender sent was all decoded before the turn ended"


async def test_a_sender_whose_clock_stood_still_in_a_silence_is_followed_afresh() -> None:
    """Chromium's timestamps stand still while it sends nothing: after 3 s of silence, the packets
    of the next words are 3 s later than their timestamps say. The release after them waits for
    none of the 3 s, nor for a sender that has stopped again."""
    mic = Microphone(FakeClock(100.0), lag_s=0.0)
    mic.send(0.0, 1.0)
    mic.send(4.0, 5.0, stood_still_s=3.0)
    mic.heard = None
    mic.time.run_until(105.2)
    mic.heard = round(2.0 * 48000)  # the decoder's timestamps stood still too: 2 s of audio in all
    assert abs(rtp_diff(mic.clock.position_now() or 0, round(2.2 * 48000)) / 48000) < 0.1, "the sender is where it stopped"
    waited = await mic.release_at(5.25)
    assert waited <= 0.02, f"waited {waited:.2f} s"


async def test_audio_on_its_way_is_waited_for() -> None:
    """On a loaded server, packets arrive on time but are decoded late: a release after the sender
    went quiet still waits for the packets that came and were not yet decoded; and with a sender
    that sends all the time (Firefox), it waits for the audio sent by the release, not for the
    audio the sender goes on sending while it waits."""
    mic = Microphone(FakeClock(100.0), lag_s=0.8)
    mic.send(0.0, 1.0)
    waited = await mic.release_at(1.6)  # quiet for 0.5 s or more, yet 1 s of audio not yet decoded
    assert 0.2 <= waited <= 0.35, waited
    assert mic.heard_s() >= 1.0 - SLACK_S, "the audio that came is on the tape (but for the slack)"

    mic = Microphone(FakeClock(100.0), lag_s=0.5)
    mic.send(0.0, 10.0)  # a sender that never stops
    waited = await mic.release_at(2.0)
    assert 0.4 <= waited <= 0.65, f"waited {waited:.2f} s"
    assert mic.heard_s() >= 2.0 - 0.02 - 0.01 - SLACK_S, "the audio sent by the release is on the tape (but for the slack)"


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
    session.connect_microphone(clock)
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
    await wait_until(lambda: page.of("message") or page.of("notice"))
    assert not page.of("notice"), page.of("notice")
    assert waited > 0.5, waited
    assert max(services.heard_s) >= len(question()) / 48000, (services.heard_s, len(question()) / 48000)
    assert services.requests
    await session.close()


async def test_a_release_after_the_browser_stopped_sending_does_not_wait() -> None:
    services, session, _ = answering()
    await session.talk_start()
    await late_microphone(session, question(), lag_s=0.0)
    await asyncio.sleep(0.6)  # then nothing (a muted microphone sends no packets)
    began = time.monotonic()
    await session.talk_end()
    assert time.monotonic() - began < 0.5, "only the 0.1 s tail, not the wait for audio that is not coming"
    await wait_until(lambda: services.transcribed >= 1)
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
    assert session.listening, "the second press is still recording"
    await asyncio.sleep(1.6)
    assert services.transcribed == 0, "the first recording was dropped by the second press"
    await session.close()


async def test_a_press_after_a_long_idle_whose_audio_comes_late_is_not_taken_for_silence() -> None:
    """While nobody listens no frame is decoded, so the last decoded frame is from long ago. The
    server's 0.1 s tick must not count all that time as silence on the new recording (which ran it
    past the recording limit before its first word arrived: "I didn't hear any speech")."""
    _, session, page = answering(max_record_s=1.5)
    await asyncio.sleep(1.7)  # idle for longer than the recording limit
    await session.talk_start()
    await asyncio.sleep(0.3)  # the press's first frame is late: ticks come first
    session.tick()
    session.tick()
    await late_microphone(session, question()[: 48000 * 3 // 4], lag_s=0.0)
    await session.talk_end()
    await wait_until(lambda: page.of("message") or page.of("notice"))
    assert not page.of("notice"), page.of("notice")
    assert [m["role"] for m in page.of("message")][:1] == ["user"]
    assert not [r for r in page.of("recording") if r.get("reason")], "the recording did not reach its limit"
    await session.close()
