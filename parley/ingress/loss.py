"""What a lossy link needs and aiortc 1.16 lacks, in one place: redundant audio (RED, RFC 2198)
both ways, in-band FEC asked of the browser, and a microphone decoded through its losses.

aiortc offers no hook for any of this, so this module reaches into it, and aiortc is pinned
(requirements.txt: aiortc==1.16.0; tests/test_loss.py fails here first if an upgrade moves what
it relies on):
- `negotiate` edits a transceiver's negotiated codecs (`RTCRtpTransceiver._codecs`) between
  `setRemoteDescription` and `createAnswer`: the Opus entry gets `useinbandfec=1` (aiortc answers
  Opus with no fmtp, so browsers send no FEC), and where the offer has RED for that Opus
  (Chromium and Safari do; Firefox ESR 153 does not) a RED entry goes first, so the browser sends
  RED and aiortc's sender sends with RED's payload type.
- `RedPacker` takes the place of aiortc's Opus encoder on that sender (`_RTCRtpSender__encoder`;
  the sender only creates one when none is set): Parley's track hands over finished Opus packets,
  and each goes out with the `RED_DEPTH` packets before it.
- `MicrophoneBuffer` takes the place of the receiver's jitter buffer
  (`_RTCRtpReceiver__jitter_buffer`) and decodes the microphone itself, with libopus
  (media.opus.OpusDecoder), handing each frame to the session at once.

Invariants of the microphone:
- Packets are handed on as they arrive, never held for reordering: the server does not play the
  microphone, it listens for the end of speech, where a jitter buffer's cushion is pure delay.
- The frames it hands on keep the sender's timing: a packet that never came (a gap in sequence
  numbers) is filled, in this order of preference, from a RED block of a later packet, from the
  next packet's in-band FEC, or by libopus's concealment, so the tape Whisper reads has no hole
  and no shift. A jump in timestamps with no packet missing (a sender that sent nothing in
  silence) is not filled here: the recorder lays silence there, as before.
- A duplicate, or a packet older than one already handed on (it came too late), is dropped; a jump
  in sequence numbers of over `MAX_JUMP` ahead or `MAX_MISORDER` behind starts the stream afresh.
- While nobody listens (push-to-talk between turns) packets are only kept, encoded (the last
  `PREROLL_FRAMES`): decoding every packet was an idle session's largest cost. `preroll()`
  decodes them, through the same decoder that goes on with the live packets.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription

from media import red
from media.opus import RTP_CLOCK_HZ, OpusDecoder, toc_duration_samples
from parley.engine.ports import WRAP, rtp_diff
from parley.ingress.senderclock import SenderClock

log = logging.getLogger("parley.loss")

RED_DEPTH = 2
"""Earlier packets each outgoing packet repeats: a packet is lost for good only when it and the
two after it are (0.1 % of packets at 10 % random loss, against 1 % with one)."""

PREROLL_FRAMES = 20
"""Encoded microphone packets (20 ms each) kept while nobody listens: more than the recorder's preroll."""

MAX_FILL_S = 0.5
"""A hole longer than this (packets lost in a burst, or an outage) is filled only up to here; the
recorder lays silence over the rest (the tape still keeps its timing)."""

MAX_MISORDER = 100
"""A packet at most this far behind the newest is a late one (dropped); further behind, the stream
started again (as aiortc's own buffer judges it)."""

MAX_JUMP = 100
"""Sequence numbers jumping further ahead than this (2 s of packets) are a new stream, not a loss
to fill."""

TIME_BASE = Fraction(1, RTP_CLOCK_HZ)


# -- negotiation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioCodecs:
    """What one audio m-line negotiated: Opus's payload type, and RED's (None without RED)."""

    opus: int
    red: int | None


def offered_red(offer_sdp: str) -> dict[str, int]:
    """For each audio m-line of an offer (by its mid), the RED payload type whose blocks are that
    m-line's Opus (fmtp 'PT/PT'); m-lines without RED are left out."""
    found: dict[str, int] = {}
    for media in SessionDescription.parse(offer_sdp).media:
        if media.kind != "audio" or media.rtp.muxId is None:
            continue
        opus = [c.payloadType for c in media.rtp.codecs if c.mimeType.lower() == "audio/opus" and c.clockRate == 48000]
        for codec in media.rtp.codecs:
            if codec.mimeType.lower() == "audio/red" and codec.clockRate == 48000 and opus and codec.payloadType is not None:
                blocks = {str(key).split("/")[0] for key in codec.parameters}
                if blocks == {str(opus[0])}:
                    found[media.rtp.muxId] = codec.payloadType
    return found


def negotiate(pc: RTCPeerConnection, offer_sdp: str, *, use_red: bool = True) -> dict[str, AudioCodecs]:
    """After `setRemoteDescription(offer)`, before `createAnswer`: ask for Opus FEC, and put RED
    first where the offer has it (and `use_red`). Returns what each audio m-line (by mid) uses."""
    reds = offered_red(offer_sdp) if use_red else {}
    result: dict[str, AudioCodecs] = {}
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio" or transceiver.mid is None:
            continue
        codecs: list[RTCRtpCodecParameters] = transceiver._codecs  # type: ignore[attr-defined]
        opus = next((c for c in codecs if c.mimeType.lower() == "audio/opus"), None)
        if opus is None or opus.payloadType is None:
            continue
        opus.parameters = {"minptime": 10, **opus.parameters, "useinbandfec": 1}
        red_type = reds.get(transceiver.mid)
        if red_type is not None:
            redundant = RTCRtpCodecParameters(
                mimeType="audio/red",
                clockRate=48000,
                channels=2,
                payloadType=red_type,
                parameters={f"{opus.payloadType}/{opus.payloadType}": None},
            )
            codecs.insert(0, redundant)
            codecs.remove(opus)
            codecs.insert(1, opus)
        result[transceiver.mid] = AudioCodecs(opus=opus.payloadType, red=red_type)
    return result


# -- sending -----------------------------------------------------------------------------------


class RedPacker:
    """Stands in for aiortc's Opus encoder on a sender that sends RED: each finished Opus packet
    (an `av.Packet` from Parley's track, pts on the 48 kHz clock) goes out as a RED payload with
    the `depth` packets before it."""

    def __init__(self, opus_type: int, depth: int = RED_DEPTH) -> None:
        self.opus_type = opus_type
        self._earlier: deque[tuple[int, bytes]] = deque(maxlen=depth)

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        base = packet.time_base or TIME_BASE
        timestamp = int((packet.pts or 0) * base * RTP_CLOCK_HZ) % WRAP
        data = bytes(packet)
        earlier = [(rtp_diff(timestamp, at), old) for at, old in self._earlier]
        self._earlier.append((timestamp, data))
        return [red.pack(self.opus_type, data, earlier)], timestamp

    def encode(self, frame: object, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise TypeError("RedPacker sends finished Opus packets; Parley's track never hands over raw audio")


def send_red(pc: RTCPeerConnection, codecs: dict[str, AudioCodecs]) -> None:
    """Give the audio senders whose m-line negotiated RED a `RedPacker` (before they start)."""
    for transceiver in pc.getTransceivers():
        chosen = codecs.get(transceiver.mid or "")
        if transceiver.kind == "audio" and chosen is not None and chosen.red is not None:
            name = "_RTCRtpSender__encoder"
            if not hasattr(transceiver.sender, name):
                log.warning("aiortc's sender has no %s: Parley's voice goes out without RED", name)
                continue
            setattr(transceiver.sender, name, RedPacker(chosen.opus))


# -- receiving -------------------------------------------------------------------------------------


@dataclass
class MicrophoneStats:
    """What the microphone's packets went through (for the logs and the benchmark)."""

    packets: int = 0
    lost: int = 0
    """Packets that never came (gaps in the sequence numbers)."""
    from_red: int = 0
    from_fec: int = 0
    concealed: int = 0
    late: int = 0
    """Duplicates and packets older than one already handed on."""
    unreadable: int = 0
    """RED packets whose blocks did not add up (dropped; their audio concealed like a lost one's)."""

    def counts(self) -> dict[str, int]:
        """Packets by outcome (parley.engine.metrics.MICROPHONE_OUTCOMES)."""
        s = self
        return {"received": s.packets, "lost": s.lost, "red": s.from_red, "fec": s.from_fec, "concealed": s.concealed}

    def summary(self) -> str:
        if not self.lost:
            return f"{self.packets} packets, none lost"
        return (
            f"{self.packets} packets, {self.lost} lost ({100 * self.lost / max(1, self.packets + self.lost):.1f} %): "
            f"{self.from_red} repaired from RED, {self.from_fec} from FEC, {self.concealed} concealed"
            + (f"; {self.unreadable} unreadable RED packets" if self.unreadable else "")
        )


class MicrophoneBuffer(JitterBuffer):
    """The microphone's receiver buffer and decoder: every packet decoded the moment it arrives,
    through its losses (see the module's invariants), each frame given to `deliver`."""

    def __init__(
        self,
        listening: Callable[[], bool],
        deliver: Callable[[av.AudioFrame], None] = lambda frame: None,
        *,
        red_types: set[int] | frozenset[int] = frozenset(),
    ) -> None:
        super().__init__(capacity=16)  # aiortc's own buffering is not used (add is replaced)
        self._listening = listening
        self._deliver = deliver
        self.red_types = set(red_types)
        """Payload types whose packets are RED (set once the answer is made)."""
        self._decoder = OpusDecoder()
        self._kept: deque[tuple[int, bytes, list[tuple[int, bytes]], int]] = deque(maxlen=PREROLL_FRAMES)
        self._last_sequence: int | None = None
        self._next_timestamp: int | None = None
        """The timestamp just after the last audio decoded (None: the decoder starts afresh)."""
        self.stats = MicrophoneStats()
        self.clock = SenderClock(RTP_CLOCK_HZ, origin=None)
        """Where the sender's RTP clock is now, from the arrivals of every packet; positions count
        from the timestamp of the first packet decoded, as the frames' pts do."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Take one RTP packet; frames go to `deliver`, never back to aiortc's decoder."""
        self.clock.observe(packet.timestamp)
        lost = 0
        if self._last_sequence is not None:
            step = (packet.sequence_number - self._last_sequence) % 65536
            if 65536 - MAX_MISORDER <= step or step == 0:
                self.stats.late += 1
                return False, None  # a duplicate, or older than what was handed on already
            if step > MAX_JUMP:  # not a loss: a new stream (or an outage the recorder lays silence over)
                self._decoder.reset()
                self._next_timestamp = None
            else:
                lost = step - 1
        self._last_sequence = packet.sequence_number
        self.stats.packets += 1
        self.stats.lost += lost
        data: bytes = packet._data  # type: ignore[attr-defined]  # set by the receiver (aiortc 1.16)
        earlier: list[tuple[int, bytes]] = []
        if packet.payload_type in self.red_types:
            try:
                blocks = red.unpack(data)
            except ValueError:
                self.stats.unreadable += 1
                return False, None
            data = blocks[-1].data
            earlier = [((packet.timestamp - b.offset) % WRAP, b.data) for b in blocks[:-1]]
        if not self._listening():
            self._kept.append((packet.timestamp, data, earlier, lost))
            return False, None
        audio, start = self._decode(packet.timestamp, data, earlier, lost)
        if self.clock.origin is None:
            self.clock.origin = start
        if audio.size:
            frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = RTP_CLOCK_HZ
            frame.pts = (start - self.clock.origin) % WRAP
            frame.time_base = TIME_BASE
            try:
                self._deliver(frame)
            except Exception:
                log.exception("the session failed on a microphone frame")
        return False, None

    def preroll(self) -> np.ndarray:
        """The kept packets decoded: float32 mono at 48 kHz, oldest first (then forgotten). The
        decoder goes on from them with the live packets."""
        kept, self._kept = list(self._kept), deque(maxlen=PREROLL_FRAMES)
        self._decoder.reset()
        self._next_timestamp = None
        pieces = [self._decode(*item)[0] for item in kept]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

    def _decode(self, timestamp: int, data: bytes, earlier: list[tuple[int, bytes]], lost: int) -> tuple[np.ndarray, int]:
        """This packet's audio, after whatever fills the hole before it; and the timestamp it starts at."""
        pieces: list[np.ndarray] = []
        start = timestamp
        expected = self._next_timestamp
        repaired = self.stats.from_red + self.stats.from_fec
        if expected is not None and lost > 0:
            hole = rtp_diff(timestamp, expected)
            if 0 < hole:
                fill = min(hole, round(MAX_FILL_S * RTP_CLOCK_HZ))
                at = timestamp - fill
                start = at % WRAP
                for block_at, block in earlier:
                    ahead = rtp_diff(block_at, at)
                    if ahead < 0 or rtp_diff(timestamp, block_at) <= 0:
                        continue  # heard already, or not before this packet
                    if ahead > 0:
                        pieces.append(self._decoder.conceal(ahead))
                    audio = self._decoder.decode(block)
                    pieces.append(audio)
                    at += ahead + audio.size
                    self.stats.from_red += 1
                rest = rtp_diff(timestamp, at)
                if rest > 0:
                    last = min(rest, _duration(data))
                    if rest > last:
                        pieces.append(self._decoder.conceal(rest - last))
                    if self._decoder.has_fec(data):
                        self.stats.from_fec += 1
                    pieces.append(self._decoder.recover(data, last))
        # What no block nor FEC brought back was concealed (or, past MAX_FILL_S, is the recorder's silence).
        self.stats.concealed += max(0, lost - (self.stats.from_red + self.stats.from_fec - repaired))
        audio = self._decoder.decode(data)
        pieces.append(audio)
        self._next_timestamp = (timestamp + audio.size) % WRAP
        return (np.concatenate(pieces) if len(pieces) > 1 else audio), start


def _duration(data: bytes) -> int:
    try:
        return toc_duration_samples(data)
    except ValueError:
        return 960


def listen_to_microphone(
    receiver: RTCRtpReceiver, deliver: Callable[[av.AudioFrame], None], listening: Callable[[], bool], red_types: set[int]
) -> MicrophoneBuffer | None:
    """Give the receiver a `MicrophoneBuffer` (aiortc 1.16 has no setting for its jitter buffer;
    it is replaced on the receiver). None, with a warning, where aiortc has no such attribute."""
    name = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, name):
        log.warning("aiortc's receiver has no %s: the microphone is decoded by aiortc, 80 ms late and with holes", name)
        return None
    buffer = MicrophoneBuffer(listening, deliver, red_types=red_types)
    setattr(receiver, name, buffer)
    return buffer
