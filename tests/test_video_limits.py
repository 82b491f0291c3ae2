"""The server bounds the video it decodes and hands on, whatever a client sends (parley.ingress.video,
.framelimit, .rtpvideo, .rtc).

Frames of any size are encoded by PyAV (libvpx, libx264) or aiortc's own encoders (RTP payloads
already packetized), fed as RtpPackets to the buffer on a simulated clock, and what it hands on is
decoded by aiortc's decoders; the end-to-end test runs a loopback aiortc sender against a `Peer`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, cast

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack
from aiortc.codecs.base import Decoder, Encoder
from aiortc.codecs.h264 import H264Decoder, H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.rtp import RtpPacket

from parley.config import ParleyConfig
from parley.engine.services import Services
from parley.engine.session import Session
from parley.ingress.framelimit import FrameLimiter, size_limits, too_large
from parley.ingress.ice import configure_ice
from parley.ingress.rtc import Peer
from parley.ingress.rtpvideo import h264_sps_size, h264_sps_units, vp8_size
from parley.ingress.video import PLI_INTERVAL_S, VideoBuffer
from parley.policy import session_settings

MAX_WIDTH, MAX_FPS = 640, 2.0
PAYLOAD_TYPE = 97
CODECS: dict[str, tuple[type[Encoder], type[Decoder], Callable[[bytes], bytes]]] = {
    "video/VP8": (Vp8Encoder, Vp8Decoder, vp8_depayload),
    "video/H264": (H264Encoder, H264Decoder, h264_depayload),
}
needs_x264 = pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV has no libx264")


@functools.cache
def _planes(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width]
    return x.astype(np.int32), y.astype(np.int32)


def image(i: int, width: int, height: int) -> av.VideoFrame:
    """Frame `i` of a moving pattern, `width` x `height`."""
    x, y = _planes(width, height)
    rgb = np.stack([(x + i * 4) % 256, (y * 2 + i * 3) % 256, (x * y + i * 7) % 251], -1).astype(np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def encode(codec: str, width: int, height: int, frames: int = 1, options: dict[str, str] | None = None) -> list[bytes]:
    """`frames` frames encoded by PyAV (Annex B for H.264), the first a key frame."""
    context = av.CodecContext.create(codec, "w")
    options = dict(options or {})
    pix_fmt = options.pop("pix_fmt", "yuv420p")
    context.width, context.height, context.pix_fmt = width, height, pix_fmt  # type: ignore[attr-defined]
    context.time_base = Fraction(1, 30)
    context.bit_rate = 1_000_000
    context.options = {"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx" else options
    out: list[bytes] = []
    for i in range(frames):
        frame = image(i, width, height).reformat(format=pix_fmt)
        frame.pts = i
        out += [bytes(p) for p in context.encode(frame)]  # type: ignore[attr-defined]
    out += [bytes(p) for p in context.encode(None)]  # type: ignore[attr-defined]
    return out


def nal_units(annex_b: bytes) -> list[bytes]:
    return [nal.rstrip(b"\x00") for nal in annex_b.split(b"\x00\x00\x01") if nal.rstrip(b"\x00")]


# -- the size parsers, on frames from real encoders


@pytest.mark.parametrize("size", [(320, 240), (640, 480), (642, 362), (1280, 720), (2560, 1440)], ids=str)
def test_vp8_key_frame_size(size: tuple[int, int]) -> None:
    key, delta = encode("libvpx", *size, frames=2)[:2]
    assert vp8_size(key) == size
    assert vp8_size(delta) is None  # only key frames carry it
    assert vp8_size(key[:9]) is None and vp8_size(key[:3] + b"\x00\x00\x00" + key[6:]) is None  # short, no start code


@needs_x264
@pytest.mark.parametrize(
    ("size", "options"),
    [
        ((1920, 1080), {}),  # High profile, coded 1088 high, cropped
        ((1280, 720), {"profile": "baseline"}),
        ((640, 360), {"x264-params": "cqm=jvt"}),  # scaling matrices in the SPS
        ((1920, 1080), {"pix_fmt": "yuv444p"}),  # High 4:4:4: cropped in whole rows
        ((1920, 1080), {"pix_fmt": "yuv422p"}),
        ((720, 480), {"x264-params": "interlaced=1"}),  # fields: frame_mbs_only_flag 0
        ((1000, 562), {}),
        ((3840, 2160), {}),
    ],
    ids=str,
)
def test_h264_sps_size(size: tuple[int, int], options: dict[str, str]) -> None:
    stream = b"".join(encode("libx264", *size, options=options)[:1])
    (sps,) = [nal for nal in nal_units(stream) if nal[0] & 0x1F == 7]
    assert h264_sps_size(sps) == size
    assert h264_sps_size(sps[:3]) is None and h264_sps_size(b"\x68" + sps[1:]) is None  # truncated; a PPS


@needs_x264
def test_h264_sps_found_in_stap_a_and_fu_a() -> None:
    stream = b"".join(encode("libx264", 1280, 720)[:1])
    sps = next(nal for nal in nal_units(stream) if nal[0] & 0x1F == 7)
    pps = next(nal for nal in nal_units(stream) if nal[0] & 0x1F == 8)
    stap = bytes([24]) + b"".join(len(n).to_bytes(2, "big") + n for n in (sps, pps))
    fu = [bytes([sps[0] & 0xE0 | 28, 0x80 | 7]) + sps[1:6], bytes([28, 7]) + sps[6:10], bytes([28, 0x40 | 7]) + sps[10:]]
    for payloads in ([sps], [stap, pps], fu, [b"\x41\x9a", *fu]):
        assert [h264_sps_size(n) for n in h264_sps_units(payloads)] == [(1280, 720)]
    assert h264_sps_units([pps, b"\x65\x88"]) == []


def test_the_hard_cap() -> None:
    assert size_limits(640) == (1280, 4 * 640 * 640)
    for ok in [(640, 480), (1280, 720), (1280, 1280), (640, 2560), (1000, 1000)]:
        assert not too_large(*ok, 640), ok
    for over in [(1282, 720), (2560, 1440), (3840, 2160), (1280, 1290), (400, 4200)]:
        assert too_large(*over, 640), over


# -- the buffer, before decoding


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sender:
    """A sender that encodes a key frame `pli_delay_s` after each PLI (a round trip), and changes
    its size when told (a new size is a key frame)."""

    codec: str
    clock: Clock
    pli_delay_s: float = 0.06
    encoder: Encoder = field(init=False)
    sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    key_due: float | None = None
    sent: int = 0

    def __post_init__(self) -> None:
        self.encoder = CODECS[self.codec][0]()

    def frame(self, i: int, size: tuple[int, int]) -> list[RtpPacket]:
        key = self.key_due is not None and self.clock.now >= self.key_due
        if key:
            self.key_due = None
        picture = image(i, *size)
        picture.pts, picture.time_base = round(self.clock.now * 90000), Fraction(1, 90000)
        payloads, timestamp = self.encoder.encode(picture, force_keyframe=key)
        depayload = CODECS[self.codec][2]
        packets = []
        for n, payload in enumerate(payloads):
            packet = RtpPacket(PAYLOAD_TYPE, int(n == len(payloads) - 1), next(self.sequence) % 65536, timestamp, 1234, payload)
            packet._data = depayload(payload)  # type: ignore[attr-defined]  # as RTCRtpReceiver does
            packets.append(packet)
        self.sent += 1
        return packets

    def pli(self) -> None:
        if self.key_due is None:
            self.key_due = self.clock.now + self.pli_delay_s


@dataclass
class Received:
    decoded: list[tuple[float, int, int]] = field(default_factory=list)
    """(when, width, height) of each frame the decoder gave."""
    plis: list[float] = field(default_factory=list)
    errors: int = 0


def run(
    buffer: VideoBuffer,
    sender: Sender,
    schedule: list[tuple[float, tuple[int, int], float]],
    received: Received | None = None,
) -> Received:
    """Send, for each (seconds, size, fps) in `schedule`, frames of that size at that rate into
    `buffer`, and decode what it hands on."""
    received = received or Received()
    decoder = CODECS[sender.codec][1]()
    clock, i = sender.clock, 0
    for seconds, size, fps in schedule:
        for _ in range(round(seconds * fps)):
            for packet in sender.frame(i, size):
                pli, frame = buffer.add(packet)
                if pli:
                    received.plis.append(clock.now)
                    sender.pli()
                if frame is not None:
                    try:
                        received.decoded += [(clock.now, f.width, f.height) for f in decoder.decode(frame)]  # type: ignore[attr-defined]
                    except av.FFmpegError:
                        received.errors += 1
            i += 1
            clock.now += 1 / fps
    return received


def limited_buffer(clock: Clock, codec: str, **limits: Any) -> VideoBuffer:
    return VideoBuffer(lambda pt: codec if pt == PAYLOAD_TYPE else None, clock=clock, label="session test: ", **limits)


CODEC_IDS = ["video/VP8", pytest.param("video/H264", marks=needs_x264)]


@pytest.mark.parametrize("codec", CODEC_IDS)
def test_a_stream_over_the_cap_is_never_decoded(codec: str, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    buffer = limited_buffer(clock, codec, max_width=MAX_WIDTH)
    sender = Sender(codec, clock)
    with caplog.at_level(logging.WARNING, logger="parley.video"):
        received = run(buffer, sender, [(1.0, (2560, 1440), 10)])
    assert received.decoded == [] and buffer.frames == 0  # the decoder never saw a frame
    assert buffer.frames_too_large == buffer.frames_dropped == sender.sent and buffer.waiting_for_key
    # a key frame asked for at once, then at most every PLI_INTERVAL_S
    assert received.plis and received.plis[0] == pytest.approx(100.0)
    assert all(b - a >= PLI_INTERVAL_S - 1e-9 for a, b in itertools.pairwise(received.plis))
    assert len(received.plis) <= 1 / PLI_INTERVAL_S + 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("session test: camera: a 2560x1440 key frame") and "1280 wide" in line
    # The client gives in: the next key frame (a new size is one) is decoded, and all after it.
    received = run(buffer, sender, [(1.0, (640, 360), 10)], received)
    assert received.decoded and {(w, h) for _, w, h in received.decoded} == {(640, 360)} and not received.errors
    assert buffer.frames == len(received.decoded) == 10 and not buffer.waiting_for_key


@pytest.mark.parametrize("codec", CODEC_IDS)
def test_a_stream_under_the_cap_is_decoded(codec: str) -> None:
    clock = Clock()
    buffer = limited_buffer(clock, codec, max_width=MAX_WIDTH)
    received = run(buffer, Sender(codec, clock), [(0.5, (1280, 720), 10)])
    assert [(w, h) for _, w, h in received.decoded] == [(1280, 720)] * 5
    assert buffer.frames_too_large == buffer.frames_dropped == 0 and not received.errors


@pytest.mark.parametrize("codec", CODEC_IDS)
def test_a_fast_stream_is_decoded_key_frames_only_then_all_again(codec: str, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    buffer = limited_buffer(clock, codec, max_width=MAX_WIDTH, max_fps=MAX_FPS)
    sender = Sender(codec, clock)
    with caplog.at_level(logging.WARNING, logger="parley.video"):
        received = run(buffer, sender, [(3.0, (320, 240), 30)])
        assert buffer.key_only and buffer.incoming_fps == pytest.approx(30, rel=0.1)
        start = clock.now
        received = run(buffer, sender, [(5.0, (320, 240), 30)], received)
    assert buffer.key_only and not received.errors  # no frame handed on without its references
    late = [t for t, _, _ in received.decoded if t >= start]
    # decoded: one key frame per interval at most, after it (asked for each interval after the last)
    assert 5.0 / (PLI_INTERVAL_S + 0.2) <= len(late) <= 5.0 * MAX_FPS + 1
    assert all(b - a >= 1 / MAX_FPS - 1e-9 for a, b in itertools.pairwise(late))
    assert buffer.frames_over_rate > 100
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("session test: camera: 30 frames/s arriving") and "video_max_fps 2" in line
    # The client slows down to the limit: every frame is decoded again.
    received = run(buffer, sender, [(6.0, (320, 240), MAX_FPS)], received)
    assert not buffer.key_only and not buffer.waiting_for_key and not received.errors
    tail = [t for t, _, _ in received.decoded if t >= clock.now - 2.0]
    assert len(tail) == 4


def test_a_client_sending_only_key_frames_fast_gets_one_decoded_per_interval() -> None:
    """A client can ignore PLIs and send key frames only: those over the rate are not decoded either."""
    clock = Clock()
    buffer = limited_buffer(clock, "video/VP8", max_width=MAX_WIDTH, max_fps=MAX_FPS)
    sender = Sender("video/VP8", clock)
    sender.pli = lambda: None  # type: ignore[method-assign]
    original = sender.frame

    def always_key(i: int, size: tuple[int, int]) -> list[RtpPacket]:
        sender.key_due = clock.now
        return original(i, size)

    sender.frame = always_key  # type: ignore[method-assign]
    received = run(buffer, sender, [(3.0, (320, 240), 30)])
    start = clock.now
    received = run(buffer, sender, [(4.0, (320, 240), 30)], received)
    late = [t for t, _, _ in received.decoded if t >= start]
    assert buffer.key_only and len(late) <= 4.0 * MAX_FPS + 1 and not received.errors


def test_frames_ended_by_marker_bits_under_one_timestamp_are_counted_too() -> None:
    """A frame ends at a marker bit too: a client that marks every packet and never changes the
    timestamp sends a frame a packet, and is limited like any other."""
    clock = Clock()
    buffer = limited_buffer(clock, "video/VP8", max_width=MAX_WIDTH, max_fps=MAX_FPS)
    sender = Sender("video/VP8", clock)
    original = sender.frame

    def marked(i: int, size: tuple[int, int]) -> list[RtpPacket]:
        packets = original(i, size)
        for packet in packets:
            packet.marker, packet.timestamp = 1, 5555
        return packets

    sender.frame = marked  # type: ignore[method-assign]
    handed: list[float] = []
    for i in range(round(6.0 * 30)):
        for packet in sender.frame(i, (320, 240)):
            pli, frame = buffer.add(packet)
            if pli:
                sender.pli()
            if frame is not None:
                handed.append(clock.now)
        clock.now += 1 / 30
    assert buffer.key_only
    assert len([t for t in handed if t >= clock.now - 3.0]) <= 3.0 * MAX_FPS + 1


# -- after decoding


def decoded(width: int, height: int) -> av.VideoFrame:
    return av.VideoFrame(width, height, "yuv420p")


def test_decoded_frames_are_scaled_or_dropped_by_size(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limiter = FrameLimiter(MAX_WIDTH, MAX_FPS, label="session test: ", clock=clock)
    with caplog.at_level(logging.WARNING, logger="parley.video"):
        for size, expected in [
            ((640, 480), (640, 480)),
            ((1280, 720), (640, 360)),
            ((1000, 563), (640, 360)),  # even dimensions, the aspect kept
            ((1280, 1280), (640, 640)),
            ((2560, 1440), None),
            ((300, 6000), None),
        ]:
            frame = decoded(*size)
            out = limiter.offer(frame)
            assert (out and (out.width, out.height)) == expected, size
            if size == (640, 480):
                assert out is frame  # untouched
            clock.now += 1 / MAX_FPS
    assert (limiter.scaled, limiter.too_large, limiter.delivered, limiter.over_rate) == (3, 2, 4, 0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(line.startswith("session test: camera: ") for line in lines)
    assert "2560x1440" in lines[1] and "1280x720" in lines[0]


def test_decoded_frames_reach_the_session_at_most_at_the_rate_the_newest_first() -> None:
    clock = Clock()
    limiter = FrameLimiter(MAX_WIDTH, MAX_FPS, clock=clock)
    handed: list[tuple[float, int]] = []
    for i in range(90):  # 3 s at 30 fps
        frame = decoded(320, 240)
        frame.pts = i
        due = limiter.due
        if due is not None and due <= clock.now:  # the peer's timer
            released = limiter.release()
            assert released is not None and released.pts is not None
            handed.append((clock.now, released.pts))
        if (out := limiter.offer(frame)) is not None:
            assert out.pts is not None
            handed.append((clock.now, out.pts))
        clock.now += 1 / 30
    assert 3.0 * MAX_FPS - 1 <= len(handed) <= 3.0 * MAX_FPS + 1
    assert all(b[0] - a[0] >= 1 / MAX_FPS - 1e-9 for a, b in itertools.pairwise(handed))
    assert all(now - pts / 30 - 100 < 1 / 30 + 1e-6 for now, pts in handed)  # the newest frame each time
    assert limiter.over_rate == 90 - len(handed) - 1  # all the others; one still held
    limiter.close()
    assert limiter.due is None and limiter.release() is None


# -- end to end: a loopback aiortc sender against the server's Peer


class PatternTrack(VideoStreamTrack):
    def __init__(self, width: int, height: int, fps: int) -> None:
        super().__init__()
        self.picture, self.fps, self.count = image(0, width, height), fps, 0

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(1 / self.fps)
        frame = self.picture.reformat(format="yuv420p")
        frame.pts, frame.time_base = self.count * 90000 // self.fps, Fraction(1, 90000)
        self.count += 1
        return frame


async def session_frames(width: int, height: int, fps: int, seconds: float) -> tuple[list[tuple[float, av.VideoFrame]], Peer]:
    configure_ice(["127.0.0.1"], None)  # loopback only (process-wide, as the other tests leave it)
    session = Session("v" * 12, session_settings(ParleyConfig()), cast(Services, None))  # no turn is ever run
    got: list[tuple[float, av.VideoFrame]] = []
    session.on_video_frame = lambda frame: got.append((time.monotonic(), frame))  # type: ignore[method-assign]
    browser, peer = RTCPeerConnection(), Peer(session, [], video_max_width=MAX_WIDTH, video_max_fps=MAX_FPS)
    try:
        browser.addTransceiver("audio")
        browser.addTrack(PatternTrack(width, height, fps))
        await browser.setLocalDescription(await browser.createOffer())
        answer = await peer.answer(browser.localDescription.sdp, "offer")
        await browser.setRemoteDescription(answer)
        async with asyncio.timeout(10):
            while browser.connectionState != "connected":
                await asyncio.sleep(0.05)
        await asyncio.sleep(seconds)
        return got, peer
    finally:
        await browser.close()
        await peer.close()


@pytest.mark.parametrize(("size", "expected"), [((1280, 720), (640, 360)), ((640, 480), (640, 480))], ids=str)
async def test_a_loopback_stream_reaches_the_session_bounded(size: tuple[int, int], expected: tuple[int, int]) -> None:
    got, peer = await session_frames(*size, fps=30, seconds=4.0)
    assert got and {(f.width, f.height) for _, f in got} == {expected}
    assert all(b - a >= 1 / MAX_FPS - 0.02 for (a, _), (b, _) in itertools.pairwise(got))
    assert len(got) <= 4.0 * MAX_FPS + 2
    assert peer.video.over_rate > 0 and (peer.video.scaled > 0) == (size != expected)


async def test_a_loopback_stream_over_the_cap_never_reaches_the_decoder(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        got, peer = await session_frames(2560, 1440, fps=10, seconds=3.0)
    assert got == [] and peer.video.too_large == 0  # nothing decoded to drop
    assert "a 2560x1440 key frame, over the cap" in caplog.text
    summary = [r.getMessage() for r in caplog.records if "camera: 0 frames" in r.getMessage()]
    assert len(summary) == 1 and "over the size cap" in summary[0]
