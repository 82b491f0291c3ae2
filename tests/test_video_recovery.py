"""The camera's jitter buffer after packet loss (parley.ingress.video), on real VP8 and H.264.

A moving test pattern is encoded by aiortc's own encoders (RTP payloads already packetized), sent
as RtpPackets through a simulated link that loses, delays, reorders and duplicates packets,
depayloaded as aiortc's receiver does, fed to the buffer on a simulated clock, and what the buffer
hands on is decoded by aiortc's decoders and compared with the frame that was sent. A PLI reaches
the sender after `PLI_DELAY_FRAMES` frames (a round trip), which then encodes a key frame.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.codecs.base import Decoder, Encoder
from aiortc.codecs.h264 import H264Decoder, H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import TimestampMapper
from aiortc.rtp import RtpPacket

from parley.ingress.video import PLI_INTERVAL_S, WAIT_S, VideoBuffer, recover_video

WIDTH, HEIGHT = 320, 240
FPS = 30
TICKS = 90000 // FPS
PAYLOAD_TYPE = 97
PLI_DELAY_FRAMES = 2
CLEAN_DB = 28.0
"""Every frame this buffer hands on decodes to at least this PSNR (luma) against its source. The
encoder at 1 Mbps gives 31-40 dB on this pattern; a frame decoded on a lost reference, well under 20."""

CODECS: dict[str, tuple[type[Encoder], type[Decoder], Callable[[bytes], bytes]]] = {
    "video/VP8": (Vp8Encoder, Vp8Decoder, vp8_depayload),
    "video/H264": (H264Encoder, H264Decoder, h264_depayload),
}

_rng = np.random.default_rng(7)
_texture = _rng.integers(0, 256, (HEIGHT * 2, WIDTH * 2), dtype=np.uint8)
_y, _x = np.mgrid[0:HEIGHT, 0:WIDTH]


def pattern(i: int) -> np.ndarray:
    """Frame `i` of the test pattern: moving gradients, a moving noise texture and a moving box."""
    noise = _texture[(i * 3) % HEIGHT : (i * 3) % HEIGHT + HEIGHT, (i * 5) % WIDTH : (i * 5) % WIDTH + WIDTH]
    image = np.stack([((_x + i * 4) % 256).astype(np.uint8), ((_y * 2 + i * 3) % 256).astype(np.uint8), noise], -1)
    left = (i * 7) % (WIDTH - 60)
    image[60:120, left : left + 60] = (255, 255, 0)
    return image


def luma(frame: av.VideoFrame) -> np.ndarray:
    return frame.reformat(format="yuv420p").to_ndarray()[:HEIGHT].astype(np.float64)


_sources: dict[int, np.ndarray] = {}


def source_luma(i: int) -> np.ndarray:
    if i not in _sources:
        _sources[i] = luma(av.VideoFrame.from_ndarray(pattern(i), format="rgb24"))
    return _sources[i]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


Link = Callable[[int, list[RtpPacket]], list[tuple[float, RtpPacket]]]
"""What the network does to frame i's packets: (delay in seconds, packet) for each delivery."""


def clean(i: int, packets: list[RtpPacket]) -> list[tuple[float, RtpPacket]]:
    return [(0.0, p) for p in packets]


@dataclass
class Run:
    decoded: dict[int, float] = field(default_factory=dict)
    """Source frame index -> PSNR of the decoded frame, in the order decoded."""
    plis: list[float] = field(default_factory=list)
    """When the buffer raised the PLI flag (seconds since the first frame)."""
    keys: list[int] = field(default_factory=list)
    """Frames the sender encoded as key frames because of a PLI."""
    sent: dict[int, list[RtpPacket]] = field(default_factory=dict)
    errors: int = 0
    """Frames the decoder failed on."""


def simulate(
    buffer: JitterBuffer,
    clock: Clock,
    frames: int,
    link: Link = clean,
    codec: str = "video/VP8",
    first_sequence: int = 1000,
    first_timestamp: int = 12345,
    honour_pli: Callable[[float], bool] = lambda t: True,
) -> Run:
    """Send `frames` frames of the pattern, one every 1/FPS s, through `link` into `buffer`, and
    decode what it hands on."""
    encoder_type, decoder_type, depayload = CODECS[codec]
    encoder, decoder = encoder_type(), decoder_type()
    run = Run()
    start = clock.now
    sequence = itertools.count(first_sequence)
    order = itertools.count()
    arriving: list[tuple[float, int, RtpPacket]] = []
    key_at: int | None = None
    mapper = TimestampMapper()
    indices: dict[int, int] = {}

    def deliver(until: float) -> None:
        nonlocal key_at
        while arriving and arriving[0][0] <= until + 1e-9:
            at, _, packet = heapq.heappop(arriving)
            clock.now = at
            pli, frame = buffer.add(packet)
            if pli:
                run.plis.append(at - start)
                if honour_pli(at - start) and key_at is None:
                    key_at = round((at - start) * FPS) + 1 + PLI_DELAY_FRAMES
            if frame is not None:
                # as RTCRtpReceiver does; the decoder may give a frame back only with a later one
                index = round(((frame.timestamp - first_timestamp) % 2**32) / TICKS)  # aiortc rounds pts down
                frame.timestamp = mapper.map(frame.timestamp)
                indices[frame.timestamp] = index
                try:
                    for decoded in decoder.decode(frame):
                        assert isinstance(decoded, av.VideoFrame) and decoded.pts is not None
                        i = indices.pop(decoded.pts)
                        run.decoded[i] = psnr(luma(decoded), source_luma(i))
                except av.FFmpegError:
                    run.errors += 1  # aiortc's receiver sends a PLI for it
                    if key_at is None:
                        key_at = round((at - start) * FPS) + 1 + PLI_DELAY_FRAMES

    for i in range(frames):
        clock.now = start + i / FPS
        deliver(clock.now - 1e-6)
        key = key_at is not None and i >= key_at
        if key:
            run.keys.append(i)
            key_at = None
        image = av.VideoFrame.from_ndarray(pattern(i), format="rgb24")
        image.pts, image.time_base = i * TICKS, Fraction(1, 90000)
        payloads, timestamp = encoder.encode(image, force_keyframe=key)
        packets = []
        for n, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=PAYLOAD_TYPE,
                marker=int(n == len(payloads) - 1),
                sequence_number=next(sequence) % 65536,
                timestamp=(first_timestamp + timestamp) % 2**32,
                ssrc=1234,
                payload=payload,
            )
            packet._data = depayload(payload)  # type: ignore[attr-defined]  # as RTCRtpReceiver does
            packets.append(packet)
        run.sent[i] = packets
        for delay, packet in link(i, packets):
            heapq.heappush(arriving, (clock.now + delay, next(order), packet))
        deliver(clock.now)
    deliver(clock.now + 1.0)
    return run


def video_buffer(clock: Clock, codec: str = "video/VP8") -> VideoBuffer:
    return VideoBuffer(lambda pt: codec if pt == PAYLOAD_TYPE else None, clock=clock)


def lose(frame: int, index: int, resend_after: float | None = None) -> Link:
    """Lose packet `index` of frame `frame` (retransmitted `resend_after` s later, if given)."""

    def link(i: int, packets: list[RtpPacket]) -> list[tuple[float, RtpPacket]]:
        sent = clean(i, packets)
        if i == frame:
            lost = sent.pop(index)[1]
            if resend_after is not None:
                sent.append((resend_after, lost))
        return sent

    return link


LOSS_FRAME = 8
FRAMES = 30


@functools.cache
def packets_before(codec: str, frame: int) -> int:
    """How many packets the encoder makes of the frames before `frame` (it is deterministic)."""
    run = simulate(JitterBuffer(capacity=512, is_video=True), Clock(), frame, codec=codec)
    return sum(len(packets) for packets in run.sent.values())


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
@pytest.mark.parametrize("wrap", [False, True], ids=["", "wrapping"])
def test_a_lost_packet_drops_frames_until_a_key_frame(codec: str, wrap: bool) -> None:
    clock = Clock()
    buffer = video_buffer(clock, codec)
    # With `wrap`, the lost packet is number 65535 and timestamps pass 2**32 just after its frame.
    first_sequence = 65535 - packets_before(codec, LOSS_FRAME) if wrap else 1000
    first_timestamp = 2**32 - (LOSS_FRAME + 1) * TICKS if wrap else 12345
    run = simulate(buffer, clock, FRAMES, lose(LOSS_FRAME, 0), codec, first_sequence, first_timestamp)
    assert not wrap or run.sent[LOSS_FRAME][0].sequence_number == 65535
    # The gap shows when the frame's next packet arrives; the PLI once WAIT_S has passed, by the next packet.
    seen = LOSS_FRAME / FPS
    assert len(run.plis) == 1 and seen + WAIT_S <= run.plis[0] <= seen + WAIT_S + 1 / FPS
    (key,) = run.keys
    assert list(run.decoded) == [*range(LOSS_FRAME), *range(key, FRAMES)]  # nothing from the loss to the key frame
    assert min(run.decoded.values()) > CLEAN_DB
    assert buffer.frames_dropped == key - LOSS_FRAME and buffer.frames == len(run.decoded)
    assert (buffer.losses, buffer.packets_lost, buffer.plis, buffer.recovered) == (1, 1, 1, 0)
    assert buffer.key_wait_s == pytest.approx((key - LOSS_FRAME) / FPS, abs=1.5 / FPS) and not buffer.waiting_for_key


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
def test_a_retransmission_in_time_recovers_without_a_pli(codec: str) -> None:
    clock = Clock()
    buffer = video_buffer(clock, codec)
    # The last packet of the first key frame comes 0.15 s late, one inside a later frame just in time.
    first, later = lose(0, -1, resend_after=0.15), lose(LOSS_FRAME, 1, resend_after=WAIT_S - 0.02)
    run = simulate(buffer, clock, FRAMES, lambda i, packets: first(i, packets) if i == 0 else later(i, packets), codec)
    assert run.plis == [] and run.keys == []
    assert list(run.decoded) == list(range(FRAMES)) and min(run.decoded.values()) > CLEAN_DB
    assert (buffer.recovered, buffer.frames_dropped, buffer.losses, buffer.plis) == (2, 0, 0, 0)


def test_duplicates_and_reordering_within_the_window() -> None:
    clock = Clock()
    buffer = video_buffer(clock)
    first_of_3: list[RtpPacket] = []

    def link(i: int, packets: list[RtpPacket]) -> list[tuple[float, RtpPacket]]:
        sent = clean(i, packets)
        if i == 0:
            sent.reverse()  # the key frame backwards
        if i == 3:
            first_of_3.append(packets[0])
        if i == 6:
            sent[-1] = (1.5 / FPS, packets[-1])  # the end of frame 6 after frame 7's packets
        if i == 9:
            sent = sent + sent  # every packet twice
        if i == 12:
            sent.append((0.0, first_of_3[0]))  # a copy of a packet handed on long ago
        return sent

    run = simulate(buffer, clock, 20, link)
    assert len(run.sent[6]) > 1 and run.plis == []
    assert list(run.decoded) == list(range(20)) and min(run.decoded.values()) > CLEAN_DB
    assert buffer.frames_dropped == 0 and buffer.packets_late == len(run.sent[9]) + 1


def test_plis_repeat_at_most_every_interval_while_no_key_frame_comes() -> None:
    clock = Clock()
    buffer = video_buffer(clock)
    honour_after = LOSS_FRAME / FPS + 1.0  # the sender ignores the first two
    run = simulate(buffer, clock, 60, lose(LOSS_FRAME, 0), honour_pli=lambda t: t > honour_after)
    assert len(run.plis) == 3
    assert all(PLI_INTERVAL_S <= b - a <= PLI_INTERVAL_S + 1 / FPS for a, b in itertools.pairwise(run.plis))
    (key,) = run.keys
    assert list(run.decoded) == [*range(LOSS_FRAME), *range(key, 60)] and min(run.decoded.values()) > CLEAN_DB
    assert buffer.key_wait_s == pytest.approx((key - LOSS_FRAME) / FPS, abs=1.5 / FPS)


def test_aiortcs_own_buffer_stalls_then_smears() -> None:
    """What the replaced buffer does with the same loss: nothing for 512 packets, then (shown with
    a smaller ring: the same code) frames decoded on a lost reference."""
    run = simulate(JitterBuffer(capacity=512, is_video=True), Clock(), FRAMES, lose(LOSS_FRAME, 0))
    # stalled, from the frame before the loss (it waits for the next frame's first packet) to the end
    assert list(run.decoded) == list(range(LOSS_FRAME - 1)) and run.plis == []
    run = simulate(JitterBuffer(capacity=32, is_video=True), Clock(), FRAMES, lose(LOSS_FRAME, 0))
    (key,) = run.keys  # its PLI comes 32 packets (0.5 s) after the loss
    smeared = [run.decoded[i] for i in range(LOSS_FRAME, key) if i in run.decoded]
    assert len(smeared) > 10 and max(smeared) < CLEAN_DB - 5  # measured: 21 dB falling to 14 dB


@pytest.mark.parametrize("jump", [2000, -1000], ids=["ahead", "behind"])
def test_a_sequence_jump_keeps_memory_bounded_and_recovers(jump: int) -> None:
    """Sequence numbers jump (2000 packets lost, or a restarted stream): the window never holds more
    than its ring, the picture is lost at once and comes back at the key frame asked for."""
    clock = Clock()
    buffer = video_buffer(clock)
    jumped_at = 10
    sizes: list[int] = []

    def link(i: int, packets: list[RtpPacket]) -> list[tuple[float, RtpPacket]]:
        if i < jumped_at:
            return clean(i, packets)
        moved = []
        for p in packets:
            copy = RtpPacket(p.payload_type, p.marker, (p.sequence_number + jump) % 65536, p.timestamp, p.ssrc, p.payload)
            copy._data = p._data  # type: ignore[attr-defined]
            moved.append((0.0, copy))
        sizes.append(len(buffer._missing))
        return moved

    run = simulate(buffer, clock, FRAMES, link)
    assert run.plis and run.plis[0] == pytest.approx(jumped_at / FPS)
    (key,) = run.keys
    assert list(run.decoded) == [*range(jumped_at), *range(key, FRAMES)] and min(run.decoded.values()) > CLEAN_DB
    assert buffer.losses == 1 and max(sizes) < buffer.capacity


class _Transport:
    state = "connected"


async def test_installed_on_aiortcs_receiver(caplog: pytest.LogCaptureFixture) -> None:
    """Through aiortc's own receiver: RTP bytes in, depayloaded there, PLIs sent, frames queued."""
    receiver = RTCRtpReceiver("video", _Transport())  # type: ignore[arg-type]
    clock = Clock()
    buffer = recover_video(receiver, clock=clock)
    assert isinstance(buffer, VideoBuffer) and receiver._RTCRtpReceiver__jitter_buffer is buffer  # type: ignore[attr-defined]
    # what receive() does once the track event has installed the buffer
    receiver._RTCRtpReceiver__codecs[PAYLOAD_TYPE] = RTCRtpCodecParameters(  # type: ignore[attr-defined]
        mimeType="video/VP8", clockRate=90000, payloadType=PAYLOAD_TYPE
    )
    receiver._RTCRtpReceiver__decoder_thread = True  # type: ignore[attr-defined]  # frames go to its queue
    plis: list[float] = []

    async def send_pli(ssrc: int) -> None:
        assert ssrc == 1234
        plis.append(clock.now)

    receiver._send_rtcp_pli = send_pli  # type: ignore[method-assign,assignment]
    run = simulate(JitterBuffer(capacity=512, is_video=True), Clock(), 20)
    lost = run.sent[LOSS_FRAME][0]
    for i in range(20):
        clock.now = 100 + i / FPS
        for packet in run.sent[i]:
            if packet is not lost:
                wire = RtpPacket.parse(packet.serialize())  # no _data: the receiver depayloads
                await receiver._handle_rtp_packet(wire, arrival_time_ms=int(clock.now * 1000))
    queue = receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
    frames: list[JitterFrame] = [queue.get_nowait()[1] for _ in range(queue.qsize())]
    assert len(frames) == LOSS_FRAME and buffer.frames_dropped == 20 - LOSS_FRAME
    assert plis == [pytest.approx(100 + LOSS_FRAME / FPS + WAIT_S, abs=1 / FPS)]

    with caplog.at_level(logging.WARNING, logger="parley.video"):
        assert recover_video(SimpleNamespace()) is None  # type: ignore[arg-type]
    assert "no _RTCRtpReceiver__jitter_buffer" in caplog.text
