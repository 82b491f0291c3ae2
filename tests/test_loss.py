"""Packet loss, in-process: RED (RFC 2198) both ways, Opus in-band FEC and concealment on real Opus,
the microphone's buffer keeping the sender's timing through its losses, and what the answer to a
real browser offer asks for.

The offers in tests/support/sdp/ are what Debian's Chromium 156 and Firefox ESR 153 made for one
audio and one video transceiver (Chromium offers red/48000/2 for its Opus; Firefox does not).
"""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtpPacket

from media import red
from media.opus import OpusDecoder, OpusEncoder, decode_opus_frames
from parley.ingress.loss import MAX_FILL_S, RED_DEPTH, MicrophoneBuffer, RedPacker, negotiate, offered_red
from tests.support.speech import speak, trim

SDP = Path(__file__).parent / "support" / "sdp"
SENTENCE = "Seven grey geese flew slowly over the frozen harbour at dawn."


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return trim(speak(SENTENCE, rate=48000))


def encoded(audio: np.ndarray, fec_loss_pct: int = 10) -> list[bytes]:
    encoder = OpusEncoder(48000, fec_loss_pct=fec_loss_pct)
    return [p.data for p in encoder.encode(audio) + encoder.flush()]


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    n = min(reference.size, other.size)
    noise = np.sum((reference[:n] - other[:n]) ** 2)
    return float(10 * np.log10(np.sum(reference[:n] ** 2) / max(noise, 1e-12)))


def lost_indices(count: int, percent: float, seed: int) -> set[int]:
    rng = np.random.default_rng(seed)
    return {i for i in range(1, count - 1) if rng.random() < percent / 100}


# -- RED ---------------------------------------------------------------------------------------


def test_red_reads_what_chromium_sends_and_what_it_writes() -> None:
    # The first bytes of a RED packet Chromium 156 sent: one 79-byte block 960 ticks back, then PT 111.
    chromium = bytes.fromhex("ef0f004f6f") + bytes(79) + b"\x78" * 80
    blocks = red.unpack(chromium)
    assert [(b.payload_type, b.offset, len(b.data)) for b in blocks] == [(111, 960, 79), (111, 0, 80)]
    packed = red.pack(111, b"new", [(1920, b"older"), (960, b"old")])
    assert [(b.offset, b.data) for b in red.unpack(packed)] == [(1920, b"older"), (960, b"old"), (0, b"new")]
    assert red.unpack(red.pack(111, b"alone", [])) == [red.Block(111, 0, b"alone")]


def test_red_leaves_out_what_its_header_cannot_hold_and_refuses_a_broken_payload() -> None:
    packed = red.pack(111, b"p", [(red.MAX_OFFSET + 1, b"too old"), (960, bytes(red.MAX_LENGTH + 1)), (480, b"ok")])
    assert [(b.offset, b.data) for b in red.unpack(packed)] == [(480, b"ok"), (0, b"p")]
    for broken in (b"", b"\xef\x0f", bytes.fromhex("ef0f004f6f") + bytes(10)):
        with pytest.raises(ValueError):
            red.unpack(broken)


# -- Opus: FEC and concealment -------------------------------------------------------------------


def test_parleys_own_opus_carries_fec_that_repairs_a_lost_packet_better_than_concealment(speech: np.ndarray) -> None:
    packets = encoded(speech)
    decoder = OpusDecoder()
    assert sum(decoder.has_fec(p) for p in packets) > len(packets) // 2, "most packets carry FEC for the one before"
    assert not any(decoder.has_fec(p) for p in encoded(speech, fec_loss_pct=0)), "fec_loss_pct=0: none"
    reference = decode_opus_frames(packets)
    lost = lost_indices(len(packets), 10, seed=3)

    def through_loss(repair: bool) -> np.ndarray:
        d, out = OpusDecoder(), []
        for i, packet in enumerate(packets):
            if i in lost:
                continue
            if i - 1 in lost:
                out.append(d.recover(packet, 960) if repair else d.conceal(960))
            out.append(d.decode(packet))
        return np.concatenate(out)

    repaired, concealed = through_loss(True), through_loss(False)
    assert repaired.size == concealed.size == reference.size, "every lost packet is made up to its length"
    assert snr_db(reference, repaired) > snr_db(reference, concealed) + 4


def test_concealment_and_fec_return_exactly_the_samples_asked_for() -> None:
    decoder = OpusDecoder()
    assert decoder.conceal(960).size == 960 and decoder.conceal(3 * 5760 + 480).size == 3 * 5760 + 480
    assert decoder.recover(encoded(np.zeros(4800, np.float32))[1], 1920).size == 1920
    assert decoder.decode(b"").size == 0


# -- the microphone's buffer -----------------------------------------------------------------------


def rtp(sequence: int, timestamp: int, payload: bytes, payload_type: int = 111) -> RtpPacket:
    packet = RtpPacket(payload_type=payload_type, sequence_number=sequence % 65536, timestamp=timestamp % 2**32, payload=payload)
    packet._data = payload  # type: ignore[attr-defined]  # the receiver sets it when it depayloads
    return packet


def through_buffer(packets: list[RtpPacket], red_types: set[int] = frozenset()) -> tuple[np.ndarray, MicrophoneBuffer]:  # type: ignore[assignment]
    frames: list[av.AudioFrame] = []
    buffer = MicrophoneBuffer(lambda: True, frames.append, red_types=red_types)
    for packet in packets:
        assert buffer.add(packet) == (False, None), "nothing goes back to aiortc's decoder"
    end = 0
    for frame in frames:
        assert frame.pts == end, "each frame starts where the one before ended: the sender's timing is kept"
        end += frame.samples
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]), buffer


@pytest.mark.parametrize("start", [0, 65530])
def test_the_microphone_keeps_its_timing_through_loss_and_repairs_it_from_fec(speech: np.ndarray, start: int) -> None:
    packets = encoded(speech)
    reference = decode_opus_frames(packets)
    lost = lost_indices(len(packets), 10, seed=7)
    base = 2**32 - 960 * 40  # the timestamps wrap too
    sent = [rtp(start + i, base + 960 * i, p) for i, p in enumerate(packets) if i not in lost]
    heard, buffer = through_buffer(sent)
    assert heard.size == reference.size, "no shift: a lost 20 ms is 20 ms on the tape"
    assert buffer.stats.lost == len(lost) and buffer.stats.from_fec + buffer.stats.concealed == len(lost)
    assert buffer.stats.from_fec >= len(lost) // 2
    assert snr_db(reference, heard) > 10


def test_red_from_the_browser_repairs_every_packet_lost_alone_or_two_in_a_row(speech: np.ndarray) -> None:
    packets = encoded(speech, fec_loss_pct=0)
    reference = decode_opus_frames(packets)
    packer = RedPacker(opus_type=111)
    red_payloads = [packer.pack(_av_packet(p, 960 * i))[0][0] for i, p in enumerate(packets)]
    lost = {5, 11, 12, 30, 31, 40}  # alone, and in pairs (RED_DEPTH = 2 covers both)
    assert RED_DEPTH == 2
    sent = [rtp(i, 960 * i, payload, payload_type=63) for i, payload in enumerate(red_payloads) if i not in lost]
    heard, buffer = through_buffer(sent, {63})
    assert buffer.stats.from_red == len(lost) and buffer.stats.concealed == 0
    assert heard.size == reference.size
    assert snr_db(reference, heard) > 40, "the repaired audio is the audio that was sent"


def test_a_long_hole_is_filled_only_so_far_and_a_late_or_repeated_packet_is_dropped(speech: np.ndarray) -> None:
    packets = encoded(speech)[:60]
    sent = [rtp(i, 960 * i, p) for i, p in enumerate(packets) if not 10 <= i < 50]  # 800 ms gone
    frames: list[av.AudioFrame] = []
    buffer = MicrophoneBuffer(lambda: True, frames.append)
    for packet in sent:
        buffer.add(packet)
    filled = frames[10].samples - 960
    assert filled == round(MAX_FILL_S * 48000), "the rest of the hole is the recorder's silence"
    assert frames[10].pts == 960 * 50 - filled
    count = len(frames)
    buffer.add(rtp(20, 960 * 20, packets[20]))
    buffer.add(rtp(59, 960 * 59, packets[59]))
    assert len(frames) == count and buffer.stats.late == 2


def _av_packet(data: bytes, pts: int) -> av.Packet:
    from fractions import Fraction

    packet = av.Packet(data)
    packet.pts = pts
    packet.time_base = Fraction(1, 48000)
    return packet


# -- negotiation -----------------------------------------------------------------------------------


async def _answer(offer: str) -> tuple[str, dict[str, object]]:
    pc = RTCPeerConnection()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        chosen = negotiate(pc, offer)
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp, dict(chosen)
    finally:
        await pc.close()


async def test_chromium_is_answered_with_red_first_and_asked_for_fec() -> None:
    offer = (SDP / "chromium_offer.sdp").read_text()
    assert offered_red(offer) == {"0": 63}
    answer, chosen = await _answer(offer)
    audio = answer.split("m=video")[0]
    assert re.search(r"^m=audio \d+ \S+ 63 111\b", audio, re.M), "RED first: Chromium sends RED, aiortc sends with its type"
    assert "a=fmtp:63 111/111" in audio
    assert re.search(r"^a=fmtp:111 .*useinbandfec=1", audio, re.M)
    assert str(chosen["0"]) == "AudioCodecs(opus=111, red=63)"


async def test_firefox_which_offers_no_red_is_still_asked_for_fec() -> None:
    offer = (SDP / "firefox_offer.sdp").read_text()
    assert offered_red(offer) == {}
    answer, chosen = await _answer(offer)
    audio = answer.split("m=video")[0]
    assert "red/48000" not in audio and re.search(r"^a=fmtp:109 .*useinbandfec=1", audio, re.M)
    assert [c.red for c in chosen.values()] == [None]  # type: ignore[attr-defined]


def test_reordered_packets_cost_nothing_with_red_and_keep_the_timing(speech: np.ndarray) -> None:
    """The server holds no packet back for reordering: one that comes after its successor is taken
    as lost when the successor arrives (its RED copy is used) and dropped when it turns up."""
    packets = encoded(speech, fec_loss_pct=0)
    reference = decode_opus_frames(packets)
    packer = RedPacker(opus_type=111)
    sent = [rtp(i, 960 * i, packer.pack(_av_packet(p, 960 * i))[0][0], payload_type=63) for i, p in enumerate(packets)]
    order = list(range(len(sent)))
    for i in range(3, len(order) - 2, 9):  # every ninth packet swapped with the next: 11 % reordered
        order[i], order[i + 1] = order[i + 1], order[i]
    heard, buffer = through_buffer([sent[i] for i in order], {63})
    assert buffer.stats.late == buffer.stats.from_red > 0 and buffer.stats.concealed == 0
    assert heard.size == reference.size and snr_db(reference, heard) > 40


def test_a_stream_that_starts_again_elsewhere_is_decoded_afresh_not_filled(speech: np.ndarray) -> None:
    packets = encoded(speech)[:40]
    frames: list[av.AudioFrame] = []
    buffer = MicrophoneBuffer(lambda: True, frames.append)
    for i in range(20):
        buffer.add(rtp(1000 + i, 960 * i, packets[i]))
    for i in range(20, 40):  # sequence numbers and timestamps jump back, as a restarted sender's may
        buffer.add(rtp(i, 5_000_000 + 960 * i, packets[i]))
    assert len(frames) == 40 and all(f.samples == 960 for f in frames), "nothing filled, nothing dropped"
    assert buffer.stats.lost == 0 and buffer.stats.late == 0
