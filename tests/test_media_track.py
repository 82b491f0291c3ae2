"""PacingTrack: what the browser hears, and when, from the server's audio track."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.packet import OpusPacket
from media.track import PacingTrack
from tests.support.clock import FakeClock

SILENCE = b"\xf8\xff\xfe"


@pytest.fixture
def fake() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def track(fake: FakeClock) -> PacingTrack:
    return PacingTrack(clock=fake, sleep=fake.sleep)


def speech(n: int, samples: int = 960) -> list[OpusPacket]:
    """Distinguishable stand-ins for TTS packets (the track never looks inside them)."""
    return [OpusPacket(data=bytes([0xFC, i]), samples=samples) for i in range(n)]


async def test_idle_track_sends_20ms_silence_packets_on_the_48khz_clock(track: PacingTrack, fake: FakeClock) -> None:
    packets = [await track.recv() for _ in range(5)]

    assert [p.pts for p in packets] == [0, 960, 1920, 2880, 3840]
    assert [p.dts for p in packets] == [p.pts for p in packets]
    assert all(bytes(p) == SILENCE for p in packets)
    assert all(p.time_base == Fraction(1, 48000) for p in packets)
    assert fake.sleeps == pytest.approx([0.02] * 4)
    assert track.packets_sent == 5 and track.late_packets == 0


async def test_queued_packets_go_out_in_order_unchanged_with_their_own_durations(track: PacingTrack, fake: FakeClock) -> None:
    long_one = OpusPacket(data=b"\xfc\x40", samples=1920)  # 40 ms
    for p in [*speech(2), long_one, *speech(1)]:
        track.capture(p)
    assert track.queued_s == pytest.approx(0.1)

    packets = [await track.recv() for _ in range(5)]

    assert [bytes(p) for p in packets] == [b"\xfc\x00", b"\xfc\x01", b"\xfc\x40", b"\xfc\x00", SILENCE]
    assert [p.pts for p in packets] == [0, 960, 1920, 3840, 4800]
    assert fake.sleeps == pytest.approx([0.02, 0.02, 0.04, 0.02])
    assert track.queued_s == 0


async def test_clear_drops_queued_audio_at_once(track: PacingTrack) -> None:
    for p in speech(5):
        track.capture(p)
    assert bytes(await track.recv()) == b"\xfc\x00"

    assert track.clear() == 4

    assert track.queued_s == 0
    assert bytes(await track.recv()) == SILENCE
    await asyncio.wait_for(track.wait_for_playout(), 1)


async def test_clear_while_recv_waits_wins_and_audio_put_meanwhile_goes_out_in_that_slot() -> None:
    gated = FakeClock(1000.0, gated=True)
    track = PacingTrack(clock=gated, sleep=gated.sleep)
    track.capture(speech(1)[0])
    assert bytes(await track.recv()) == b"\xfc\x00"  # the first packet needs no wait
    track.capture(speech(2)[1])

    pending = asyncio.create_task(track.recv())
    await gated.sleeping.wait()
    track.clear()
    gated.gate.set()
    assert bytes(await pending) == SILENCE

    gated.gate.clear()
    gated.sleeping.clear()
    pending = asyncio.create_task(track.recv())
    await gated.sleeping.wait()
    track.capture(speech(1)[0])
    gated.gate.set()
    assert bytes(await pending) == b"\xfc\x00"


async def test_on_first_audio_fires_once_per_burst_when_speech_leaves(track: PacingTrack) -> None:
    calls: list[int] = []
    watch = track.watch(on_first_audio=lambda: calls.append(track.packets_sent))
    await track.recv()  # silence: not speech
    assert calls == []

    for p in speech(3):
        track.capture(p)
    for _ in range(4):
        await track.recv()
    assert calls == [1]  # fired as the first speech packet left, not when it was queued
    assert watch.on_first_audio is None, "once per watch"
    watch.close()

    track.watch(on_first_audio=lambda: calls.append(track.packets_sent))
    track.capture(OpusPacket(data=SILENCE))  # a TTS engine's leading silence is not the first audio
    for p in speech(2):
        track.capture(p)
    for _ in range(3):
        await track.recv()
    assert calls == [1, 6]


async def test_a_failing_on_first_audio_callback_does_not_stop_the_audio(track: PacingTrack) -> None:
    def broken() -> None:
        raise RuntimeError("metrics down")

    track.watch(on_first_audio=broken)
    track.capture(speech(1)[0])

    assert bytes(await track.recv()) == b"\xfc\x00"
    assert bytes(await track.recv()) == SILENCE


async def test_drained_resolves_once_the_last_packet_has_left(track: PacingTrack) -> None:
    await asyncio.wait_for(track.wait_for_playout(), 1)  # nothing queued: already drained
    for p in speech(3):
        track.capture(p)
    waiter = asyncio.create_task(track.wait_for_playout())

    await track.recv()
    await track.recv()
    await asyncio.sleep(0)  # let the waiter run if it had been woken
    assert not waiter.done()

    await track.recv()
    await asyncio.wait_for(waiter, 1)


async def test_a_stall_is_caught_up_and_a_long_stall_resynchronises(track: PacingTrack, fake: FakeClock) -> None:
    for _ in range(3):
        await track.recv()
    fake.now += 0.11  # the loop was busy: the next 5 packets are 90..10 ms overdue
    caught_up = [await track.recv() for _ in range(6)]
    assert fake.sleeps == pytest.approx([0.02, 0.02, 0.01])  # no sleep until back on schedule
    assert track.late_packets == 4  # those more than 20 ms overdue

    fake.now += 2.0  # far behind: do not burst 100 packets, restart the schedule from now
    late_before = track.late_packets
    after = [await track.recv() for _ in range(3)]
    assert track.late_packets == late_before + 1
    assert fake.sleeps[-2:] == pytest.approx([0.02, 0.02])
    # The RTP timeline stays continuous either way: the browser sees no gap or overlap.
    pts = [p.pts for p in caught_up + after]
    assert pts == list(range(pts[0] or 0, (pts[0] or 0) + 960 * len(pts), 960))


async def test_a_stopped_track_raises(track: PacingTrack) -> None:
    track.capture(speech(1)[0])
    waiter = asyncio.create_task(track.wait_for_playout())

    track.stop()

    assert track.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await track.recv()
    await asyncio.wait_for(waiter, 1)  # nobody waits forever on a track that will never send
    track.capture(speech(1)[0])
    assert track.queued_s == 0


async def test_stopping_while_recv_waits_raises() -> None:
    gated = FakeClock(1000.0, gated=True)
    track = PacingTrack(clock=gated, sleep=gated.sleep)
    await track.recv()
    pending = asyncio.create_task(track.recv())
    await gated.sleeping.wait()

    track.stop()
    gated.gate.set()

    with pytest.raises(MediaStreamError):
        await pending


async def test_a_packet_without_duration_is_refused(track: PacingTrack) -> None:
    with pytest.raises(ValueError, match="samples"):
        track.capture(OpusPacket(data=b"\xfc\x00", samples=0))


def tone_packets(seconds: float = 0.6, hz: float = 440.0) -> list[OpusPacket]:
    """A real Opus stream from libopus: 20 ms packets of a sine at -10 dBFS."""
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate, codec.layout, codec.format = 48000, "mono", "s16"
    t = np.arange(int(seconds * 48000)) / 48000
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    packets: list[av.Packet] = []
    for i in range(0, len(pcm) - 959, 960):
        frame = av.AudioFrame.from_ndarray(pcm[None, i : i + 960], format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, i
        packets += codec.encode(frame)
    packets += codec.encode(None)
    return [OpusPacket(data=bytes(p), samples=960) for p in packets]


async def test_a_peer_connection_hears_the_queued_tone(monkeypatch: pytest.MonkeyPatch) -> None:
    # aioice never offers loopback candidates; tests may have nothing else.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    server, client = RTCPeerConnection(), RTCPeerConnection()
    track = PacingTrack()
    server.addTrack(track)
    remote: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    client.on("track", remote.set_result)
    try:
        async with asyncio.timeout(10):
            await server.setLocalDescription(await server.createOffer())
            await client.setRemoteDescription(server.localDescription)
            await client.setLocalDescription(await client.createAnswer())
            await server.setRemoteDescription(client.localDescription)
            heard = await remote

            first_audio = asyncio.Event()
            track.watch(on_first_audio=first_audio.set)
            for packet in tone_packets():
                track.capture(packet)

            loudest = 0.0
            while loudest < 3000:  # the tone's RMS is ~7000; decoded silence is 0
                frame = await heard.recv()
                assert isinstance(frame, av.AudioFrame)
                loudest = max(loudest, float(np.sqrt(np.mean(frame.to_ndarray().astype(np.float64) ** 2))))
            await first_audio.wait()
            await track.wait_for_playout()
        assert track.packets_sent > 30
    finally:
        await client.close()
        await server.close()


async def test_hold_sends_silence_and_resume_replays_the_sentence_from_its_start(track: PacingTrack) -> None:
    """Held mid-sentence, the track sends silence and keeps its queue; resumed, it plays the
    sentence again from its first packet, and the replayed part counts as played once."""
    first, second = speech(3), speech(2)
    for p in first:
        track.capture(p, tag="s0")
    for p in second:
        track.capture(p, tag="s1")
    tags: list[object] = []
    track.watch(on_tag=tags.append)
    sent = [bytes(await track.recv()) for _ in range(2)]  # two packets of s0 leave
    track.hold()
    held = [bytes(await track.recv()) for _ in range(3)]
    assert held == [SILENCE] * 3 and track.queued_s > 0
    assert track.played("s0").samples == 2 * 960
    track.resume()
    assert track.played("s0").samples == 0, "what is played again is not counted twice"
    rest = [bytes(await track.recv()) for _ in range(5)]
    assert sent + rest == [p.data for p in first[:2] + first + second]
    assert track.played("s0").samples == 3 * 960 and track.played("s1").samples == 2 * 960
    assert tags == ["s0", "s0", "s1"], "the sentence starts again, and says so"
    assert bytes(await track.recv()) == SILENCE


async def test_every_packet_that_leaves_is_the_echo_reference(track: PacingTrack) -> None:
    for p in speech(2):
        track.capture(p)
    for _ in range(4):
        await track.recv()
    assert track.far.end == 4 * 960 // 3  # 16 kHz samples of the track's timeline
    assert track.far.sounding(0, 640) and track.far.read(0, 1280).shape == (1280,)
