"""The camera's jitter buffer: whole frames in order, and after a loss nothing until a key frame.

A scene note is made from the newest decoded camera frame, so that frame must be clean and
current. aiortc 1.16 (pinned in requirements.txt) gives each video receiver a
`JitterBuffer(capacity=512, is_video=True)`, which stalls on a missing packet until it arrives.
aiortc NACKs every gap once, and Chromium answers over RTX, which the receiver unwraps before its
jitter buffer, so a retransmission fills the gap like the packet itself. When none comes, aiortc's
buffer hands on nothing until 512 later packets (seconds of video) have arrived; then it drops
whole frames, asks for a key frame (RTCP PLI) and feeds the decoder the frames after the gap,
whose references are gone: the picture is frozen, then smeared, until the key frame arrives.
`VideoBuffer` replaces it on the receiver (aiortc has no setting for it) and gives up on a missing
packet after `WAIT_S`: the frames it would have completed are dropped, a PLI is asked for at once,
and no frame reaches the decoder until a key frame starts. The decoder is left as it was: the key
frame resets it, and the frames after the key frame only refer to what came after it.

What it relies on in aiortc 1.16's `RTCRtpReceiver._handle_rtp_packet`: the buffer is the private
`_RTCRtpReceiver__jitter_buffer`, and its `add(packet)` is called once per RTP packet, after RTX is
unwrapped and NACKs are sent, with the depayloaded bytes in `packet._data` (`packet.payload` is
still the RTP payload: the VP8 payload descriptor, the H.264 NAL unit header); the first element
of what `add` returns asks for a PLI and the second, a `JitterFrame` or None, goes to the decoder,
at most one per packet. The payload type's codec is read from the receiver's private
`_RTCRtpReceiver__codecs`, which `receive()` fills after the buffer is installed.

Invariants:
- Frames are handed on whole (every packet from the frame's first to the one with the marker bit
  or before the next timestamp) and in sequence order, one per `add` at most, as aiortc does. (A
  frame goes as soon as its marker packet is in, not only once the next frame begins.)
- A missing packet is waited for `WAIT_S` from when a later packet showed the gap (the time of its
  NACK), on this buffer's clock; the wait is judged only when a packet arrives (the buffer has no
  timer: a sender that goes quiet leaves the buffer as it is until it sends again).
- After a gap is given up, nothing is handed on until a complete key frame: VP8, the frame's first
  packet has S=1, partition 0 and a key frame tag (bit 0 of the first byte of the depayloaded
  data clear); H.264, the frame starts at a frame boundary and holds an IDR slice (NAL type 5) or
  an SPS (7), in a single NAL unit, a STAP-A or the first FU-A fragment. A codec it does not know
  resumes at the next whole frame after a known frame boundary (aiortc's own behaviour). The
  stream's first frames are waited for like this too; its first packets are kept up to `WAIT_S`
  before they are judged, since they may come out of order.
- A PLI is asked for when a gap is given up and then at most every `PLI_INTERVAL_S` while no key
  frame has started arriving; the receiver also sends one for each decoder error.
- Memory is bounded as in aiortc: `capacity` packets in a ring (a power of two), the gaps in the
  window noticed in a dict no larger; a packet `capacity` or more ahead of the oldest one kept
  pushes the oldest out (a loss), one `MAX_MISORDER` or more behind it restarts the buffer (a new
  stream), one less far behind (already handed on, or given up) is counted late and dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Literal

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import MAX_MISORDER, JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger("parley.video")

WAIT_S = 0.2
"""How long a missing packet is waited for before its frames are dropped and a key frame asked
for. aiortc NACKs a gap once, when it is seen, so the retransmission arrives one round trip (plus
the sender's pacing) later: 200 ms covers round trips up to ~150 ms. Past that, a key frame (one
round trip away) is the quicker way to a clean picture, and a picture 200 ms old is still current
for a scene note."""

PLI_INTERVAL_S = 0.5
"""The least time between two PLIs from this buffer: a key frame takes a round trip plus its own
sending time (tens of kilobytes, paced) to arrive, and one on its way is not asked for again."""

CAPACITY = 512
"""Packets kept, as aiortc's video buffer."""

VP8 = "video/vp8"
H264 = "video/h264"

H264_STAP_A = 24
H264_FU_A = 28
H264_IDR = 5
H264_SPS = 7
H264_NON_IDR = 1


def h264_nal_starts(payload: bytes) -> list[tuple[int, bool]]:
    """The NAL units an H.264 RTP payload (RFC 6184) begins: (type, whether a slice starts at
    macroblock 0), in order; empty for an FU-A fragment other than the first."""
    if len(payload) < 2:
        return []
    kind = payload[0] & 0x1F
    if kind == H264_FU_A:
        if not payload[1] & 0x80:
            return []
        return [(payload[1] & 0x1F, len(payload) > 2 and bool(payload[2] & 0x80))]
    if kind == H264_STAP_A:
        nals, pos = [], 1
        while pos + 3 <= len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            nal = payload[pos + 2 : pos + 2 + size]
            if nal:
                nals.append((nal[0] & 0x1F, len(nal) > 1 and bool(nal[1] & 0x80)))
            pos += 2 + size
        return nals
    # a single NAL unit; first_mb_in_slice is ue(v), so 0 is a first bit of 1
    return [(kind, bool(payload[1] & 0x80))]


def vp8_key_start(packet: RtpPacket) -> bool:
    """Whether the packet begins a VP8 key frame: its payload descriptor (RFC 7741) has S=1 and
    partition 0, and the frame tag after it (aiortc's `vp8_depayload` leaves it first in `_data`)
    has bit 0 clear."""
    data: bytes = packet._data  # type: ignore[attr-defined]
    return bool(packet.payload) and packet.payload[0] & 0x1F == 0x10 and bool(data) and not data[0] & 1


Start = Literal["key", "maybe", "no"]


class VideoBuffer(JitterBuffer):
    """A video receiver's jitter buffer that drops what it cannot decode cleanly and asks for a
    key frame (the module's docstring has why and how).

    Counters, for logs and metrics (never reset):
    `frames` handed on; `frames_dropped`, frames (distinct timestamps) of which packets were
    thrown away undecoded; `losses`, times the picture was lost (a gap given up, packets pushed
    out, a restarted stream) and a key frame waited for; `packets_lost`, the gaps given up;
    `recovered`, missing packets that arrived in time (retransmissions); `packets_late`, duplicates
    and packets that came after their place was handed on or given up; `plis`, PLIs asked for;
    `key_wait_s`, time spent without a decodable picture, from the first packet or a loss to the
    key frame (`waiting_for_key` says whether that is now).
    """

    def __init__(
        self,
        codec_of: Callable[[int], str | None] = lambda payload_type: None,
        *,
        capacity: int = CAPACITY,
        wait_s: float = WAIT_S,
        pli_interval_s: float = PLI_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(capacity=capacity, is_video=True)  # keeps aiortc's ring; its add is replaced
        self._codec_of = codec_of
        self._wait_s = wait_s
        self._pli_interval_s = pli_interval_s
        self._clock = clock
        self._newest = 0
        """The highest sequence number in the window [`_origin`, `_newest`] (empty: `_origin` - 1)."""
        self._missing: dict[int, float] = {}
        """The window's gaps: sequence number -> when a later packet showed it missing."""
        self._left = False
        """Whether anything has left the window since the stream began (at `_began`)."""
        self._began = 0.0
        self._before: tuple[int, bool] | None = None
        """(timestamp, marker) of the packet just before `_origin`, if it arrived."""
        self._waiting_since: float | None = None
        """When the buffer began waiting for a key frame; None while frames flow."""
        self._key_arriving = False
        self._last_pli: float | None = None
        self._pli = False
        self._last_dropped: int | None = None
        self.frames = 0
        self.frames_dropped = 0
        self.losses = 0
        self.packets_lost = 0
        self.recovered = 0
        self.packets_late = 0
        self.plis = 0
        self.key_wait_s = 0.0

    @property
    def waiting_for_key(self) -> bool:
        """Whether the decoder gets nothing until a key frame."""
        return self._waiting_since is not None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        now = self._clock()
        self._pli = False
        seq = packet.sequence_number
        if self._origin is None:
            self._restart(seq, now)
            self._waiting_since = now  # for the first key frame, which the sender sends unasked
        assert self._origin is not None
        ahead = (seq - self._origin) & 0xFFFF
        behind = (self._origin - seq) & 0xFFFF
        if behind < ahead and not self._left and behind + self._size() < self._capacity:
            # Nothing has left the window since the stream began: it reaches back to an earlier packet.
            for gap in range(1, behind):
                self._missing[(seq + gap) & 0xFFFF] = now
            self._origin = seq
            ahead = behind = 0
        if behind < ahead:
            if behind < MAX_MISORDER:
                self.packets_late += 1  # already handed on or given up
                return self._result(now, self._step(now))
            self._clear()
            self._restart(seq, now)
            self._lose(now)
            ahead = 0
        if ahead >= self._capacity:
            self._push_out((seq - self._capacity + 1) & 0xFFFF, now)
            ahead = self._capacity - 1
        if ahead < self._size():
            if self._packets[seq % self._capacity] is not None:
                self.packets_late += 1  # a duplicate
                return self._result(now, self._step(now))
            if self._missing.pop(seq, None) is not None:
                self.recovered += 1
        else:
            for gap in range(self._size(), ahead):
                self._missing[(self._origin + gap) & 0xFFFF] = now
            self._newest = seq
        self._packets[seq % self._capacity] = packet
        return self._result(now, self._step(now))

    # -- the window

    def _size(self) -> int:
        assert self._origin is not None
        return (self._newest + 1 - self._origin) & 0xFFFF

    def _at(self, offset: int) -> RtpPacket | None:
        assert self._origin is not None
        return self._packets[(self._origin + offset) % self._capacity]

    def _restart(self, seq: int, now: float) -> None:
        self._origin = seq
        self._newest = (seq - 1) & 0xFFFF
        self._before = None
        self._left = False
        self._began = now
        self._missing.clear()

    def _pop(self) -> RtpPacket | None:
        """Take the packet (or gap) at `_origin` out of the window."""
        assert self._origin is not None
        pos = self._origin % self._capacity
        packet = self._packets[pos]
        self._packets[pos] = None
        self._left = True
        if packet is None:
            self._missing.pop(self._origin, None)
            self._before = None
        else:
            self._before = (packet.timestamp, bool(packet.marker))
        self._origin = (self._origin + 1) & 0xFFFF
        return packet

    def _drop(self, count: int) -> None:
        """Throw the first `count` slots of the window away undecoded (its gaps given up)."""
        for _ in range(count):
            packet = self._pop()
            if packet is None:
                self.packets_lost += 1
            else:
                self._count_dropped(packet)

    def _count_dropped(self, packet: RtpPacket) -> None:
        if packet.payload and packet.timestamp != self._last_dropped:
            self._last_dropped = packet.timestamp
            self.frames_dropped += 1

    def _clear(self) -> None:
        self._drop(self._size())

    def _push_out(self, origin: int, now: float) -> None:
        """Move the window's start to `origin` (ahead of it), dropping what it passes: a loss."""
        assert self._origin is not None
        passed = (origin - self._origin) & 0xFFFF
        if passed >= self._size():
            self._clear()
            self._restart(origin, now)
        else:
            self._drop(passed)
        self._lose(now)

    # -- giving up, asking for a key frame

    def _noticed(self, offset: int, now: float) -> float:
        """When the gap at `offset` was seen."""
        assert self._origin is not None
        return self._missing.setdefault((self._origin + offset) & 0xFFFF, now)

    def _lose(self, now: float, since: float | None = None) -> None:
        """The picture is lost (since the gap that lost it was seen): wait for a key frame."""
        if self._waiting_since is None:
            self._waiting_since = now if since is None else since
            self.losses += 1
        self._ask_pli(now)

    def _ask_pli(self, now: float) -> None:
        if self._last_pli is None or now - self._last_pli >= self._pli_interval_s:
            self._last_pli = now
            self._pli = True
            self.plis += 1

    def _result(self, now: float, frame: JitterFrame | None) -> tuple[bool, JitterFrame | None]:
        if self._waiting_since is not None and not self._key_arriving:
            # Again if the key frame asked for (or the first one, unasked) has not started in time.
            asked = self._waiting_since if self._last_pli is None else max(self._last_pli, self._waiting_since)
            if now - asked >= self._pli_interval_s:
                self._ask_pli(now)
        return self._pli, frame

    # -- frames

    def _step(self, now: float) -> JitterFrame | None:
        """Hand on the frame at the window's start if it is whole (and decodable), dropping what
        is given up or useless on the way."""
        while self._size():
            self._key_arriving = False
            first = self._at(0)
            if first is None:
                since = self._noticed(0, now)
                if now - since >= self._wait_s:
                    self._drop(1)
                    self._lose(now, since)
                    continue
                if self._waiting_since is not None and self._skip_to_key():
                    continue
                return None
            start: Start = "key"
            if self._waiting_since is not None:
                start = self._starts_key(0)
                if start == "no":
                    if not self._left and now - self._began < self._wait_s:
                        # The stream's first packets may come out of order: kept a while.
                        if self._skip_to_key():
                            continue
                        return None
                    self._drop(1)
                    continue
                self._key_arriving = start == "key"
            end, gap = self._frame_end()
            if gap is not None:
                since = self._noticed(gap, now)
                if now - since >= self._wait_s:
                    self._drop(gap + 1)
                    self._lose(now, since)
                    continue
                if self._waiting_since is not None and self._skip_to_key():
                    continue
                return None
            if end is None:
                return None  # the rest of the frame is on its way
            whole = [self._pop() for _ in range(end + 1)]
            assert all(p is not None for p in whole)  # no gap before the frame's end
            packets: list[RtpPacket] = whole  # type: ignore[assignment]
            if self._waiting_since is not None:
                if not self._is_key(packets):
                    self._count_dropped(packets[0])
                    continue
                self.key_wait_s += now - self._waiting_since
                self._waiting_since = None
                self._key_arriving = False
            data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
            if not data:
                continue  # padding
            self.frames += 1
            return JitterFrame(data=data, timestamp=packets[0].timestamp)
        return None

    def _frame_end(self) -> tuple[int | None, int | None]:
        """For the frame that starts the window: (offset of its last packet, None) when it is
        whole, (None, offset of its first gap) when a packet of it is missing, else (None, None)."""
        first = self._at(0)
        assert first is not None
        for offset in range(self._size()):
            packet = self._at(offset)
            if packet is None:
                return None, offset
            if packet.timestamp != first.timestamp:
                return offset - 1, None
            if packet.marker:
                return offset, None
        return None, None

    def _skip_to_key(self) -> bool:
        """While waiting for a key frame: drop everything before the first key frame start further
        on in the window (gaps included, which could hide only an older one)."""
        for offset in range(1, self._size()):
            if self._at(offset) is not None and self._starts_key(offset) == "key":
                self._drop(offset)
                return True
        return False

    def _starts_key(self, offset: int) -> Start:
        """Whether the packet at `offset` begins a key frame: "key", "no", or "maybe" (an H.264
        frame that begins with another NAL unit, judged once whole)."""
        packet = self._at(offset)
        assert packet is not None
        codec = self._codec(packet)
        if codec == VP8:
            return "key" if vp8_key_start(packet) else "no"
        if offset == 0:
            before = self._before
        else:
            previous = self._at(offset - 1)
            before = None if previous is None else (previous.timestamp, bool(previous.marker))
        boundary = None if before is None else before[1] or before[0] != packet.timestamp
        if codec == H264:
            nals = h264_nal_starts(packet.payload)
            if boundary is False or not nals or (nals[0][0] in (H264_NON_IDR, H264_IDR) and not nals[0][1]):
                return "no"  # inside a frame
            if any(kind in (H264_IDR, H264_SPS) for kind, _ in nals):
                return "key"
            return "no" if nals[0][0] == H264_NON_IDR else "maybe"
        return "maybe" if boundary else "no"

    def _is_key(self, packets: list[RtpPacket]) -> bool:
        codec = self._codec(packets[0])
        if codec == VP8:
            return vp8_key_start(packets[0])
        if codec == H264:
            return any(kind in (H264_IDR, H264_SPS) for p in packets for kind, _ in h264_nal_starts(p.payload))
        return True

    def _codec(self, packet: RtpPacket) -> str | None:
        name = self._codec_of(packet.payload_type)
        return name.lower() if name else None


def recover_video(receiver: RTCRtpReceiver, clock: Callable[[], float] = time.monotonic) -> VideoBuffer | None:
    """Give a video receiver a `VideoBuffer` (aiortc 1.16 has no setting for its jitter buffer; it
    is replaced on the receiver). Call it before media flows, e.g. from the "track" event. Returns
    None, with a warning, where this aiortc has no such attribute (its own buffer then stays)."""
    name = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, name):
        log.warning("aiortc's receiver has no %s: lost video packets stall the camera, then smear it", name)
        return None
    codecs: Mapping[int, object] = getattr(receiver, "_RTCRtpReceiver__codecs", {})

    def codec_of(payload_type: int) -> str | None:
        codec = codecs.get(payload_type)
        return getattr(codec, "mimeType", None)

    buffer = VideoBuffer(codec_of, clock=clock)
    setattr(receiver, name, buffer)
    return buffer
