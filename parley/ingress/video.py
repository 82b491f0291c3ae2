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
- With a width limit (`max_width`, the server's video_max_width, which browsers are only asked to
  keep to), no key frame over the hard cap (`parley.ingress.framelimit.size_limits`: twice as wide, or four times the
  pixels of a `max_width` square) reaches the decoder, nor anything after it until a key frame
  under the cap: the size is read from the frame before decoding (`parley.ingress.rtpvideo`; VP8: its key frame header;
  H.264: every SPS in the frame, a frame with one being a key frame here). A size that cannot be
  read is not a reason to drop a frame (`FrameLimiter` drops it once decoded). A PLI is asked for
  at once and then as after a loss.
- With a rate limit (`max_fps`), while frames arrive faster than `KEY_ONLY_ABOVE` times it (a
  new timestamp, or a packet after a marker bit, begins one; measured over windows of
  `RATE_WINDOW_S`, from the end of the first such window), only key frames are decoded, at most
  one every max(`PLI_INTERVAL_S`, 1 / `max_fps`) s, each asked for by a PLI that long after the
  last: the frames after each one wait for a key frame as after a loss (which makes dropping
  them safe), so decoding costs about one key frame an interval, even for a client that sends
  key frames only. Every frame is decoded again from the next key frame once they arrive at
  most `KEY_ONLY_UNTIL` times the limit (a PLI asks for it). Frames dropped so are not losses.
- What is decoded reaches the session through a `parley.ingress.framelimit.FrameLimiter` (used by parley.ingress.rtc): at most one
  frame every 1 / `max_fps` s, the newest, none over the cap, none wider than `max_width`.
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

from parley.ingress.framelimit import size_limits, too_large
from parley.ingress.rtpvideo import (
    H264,
    H264_IDR,
    H264_NON_IDR,
    H264_SPS,
    VP8,
    h264_nal_starts,
    h264_sps_size,
    h264_sps_units,
    vp8_key_start,
    vp8_size,
)

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

RATE_WINDOW_S = 2.0
"""The incoming frame rate is judged over windows of about this long."""

KEY_ONLY_ABOVE = 4.0
"""A buffer with a frame rate limit decodes key frames only while the frames arrive faster than
this many times the limit (over a `RATE_WINDOW_S` window)..."""

KEY_ONLY_UNTIL = 2.0
"""...and decodes every frame again once they arrive at most this many times the limit."""


Start = Literal["key", "maybe", "no"]
Waiting = Literal["start", "loss", "size", "rate"]


class VideoBuffer(JitterBuffer):
    """A video receiver's jitter buffer that drops what it cannot decode cleanly and asks for a
    key frame (the module's docstring has why and how).

    Counters, for logs and metrics (never reset):
    `frames` handed on; `frames_dropped`, frames (distinct timestamps) of which packets were
    thrown away undecoded; `losses`, times the picture was lost (a gap given up, packets pushed
    out, a restarted stream) and a key frame waited for; `packets_lost`, the gaps given up;
    `recovered`, missing packets that arrived in time (retransmissions); `packets_late`, duplicates
    and packets that came after their place was handed on or given up; `plis`, PLIs asked for;
    `key_wait_s`, time spent without a decodable picture, from the first packet, a loss or a key
    frame over the size cap to the next key frame (`waiting_for_key` says whether the buffer waits
    for one now, which it also does between key frames while it decodes key frames only).
    Of `frames_dropped`, `frames_too_large` were dropped for their size (a key frame over the cap
    and the frames after it) and `frames_over_rate` for the frame rate (while it decodes key
    frames only); `key_only` says whether it does now, `incoming_fps` is the rate last measured.

    With `max_width`, key frames over `size_limits(max_width)` are dropped; with `max_fps`, the
    frames decoded are bounded near that rate when many more arrive. `label` begins its warnings.
    """

    def __init__(
        self,
        codec_of: Callable[[int], str | None] = lambda payload_type: None,
        *,
        capacity: int = CAPACITY,
        wait_s: float = WAIT_S,
        pli_interval_s: float = PLI_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        max_width: int | None = None,
        max_fps: float | None = None,
        label: str = "",
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
        self._why: Waiting = "start"
        """Why the buffer waits for a key frame (while it does)."""
        self._max_width = max_width
        self._max_fps = max_fps
        self._key_interval_s = pli_interval_s if max_fps is None else max(pli_interval_s, 1 / max_fps)
        """While decoding key frames only: the least time between two key frames handed on, and
        between the last one and the next PLI."""
        self._label = label
        self._last_key: float | None = None
        """When the last key frame was handed on."""
        self._rate_last: tuple[int, bool] | None = None
        """(timestamp, marker) of the packet before."""
        self._rate_began = 0.0
        self._rate_frames = 0
        self._warned: set[str] = set()
        self.key_only = False
        self.incoming_fps: float | None = None
        self.frames_too_large = 0
        self.frames_over_rate = 0
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
        if self._max_fps is not None:
            # A frame begins at a new timestamp, or after a marker bit whatever its timestamp.
            if self._rate_last is None or self._rate_last[1] or self._rate_last[0] != packet.timestamp:
                self._count_frame(now)
            self._rate_last = (packet.timestamp, bool(packet.marker))
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
            if self._waiting_since is not None and self._why == "size":
                self.frames_too_large += 1
            elif self._waiting_since is not None and self._why == "rate":
                self.frames_over_rate += 1

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
            self._why = "loss"
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
            if now - asked >= (self._key_interval_s if self._why == "rate" else self._pli_interval_s):
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
            limited = self._max_width is not None or self._max_fps is not None
            key = self._is_key(packets) if self._waiting_since is not None or limited else False
            if key and self._max_width is not None and self._over_size(packets, now):
                self._count_dropped(packets[0])
                continue
            if self._waiting_since is not None:
                if not key or (self.key_only and self._last_key is not None and now - self._last_key < self._key_interval_s):
                    self._count_dropped(packets[0])
                    continue
                if self._why != "rate":
                    self.key_wait_s += now - self._waiting_since
                self._waiting_since = None
                self._key_arriving = False
            data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
            if not data:
                continue  # padding
            if key:
                self._last_key = now
                if self.key_only:  # the frames after it until the next key frame (at most one each interval) are not decoded
                    self._waiting_since, self._why = now, "rate"
            self.frames += 1
            return JitterFrame(data=data, timestamp=packets[0].timestamp)
        return None

    # -- limits

    def _over_size(self, packets: list[RtpPacket], now: float) -> bool:
        """Whether the key frame `packets` is over the size cap; if so, nothing more is handed on
        until a key frame under it, and one is asked for."""
        assert self._max_width is not None
        codec = self._codec(packets[0])
        sizes: list[tuple[int, int] | None] = []
        if codec == VP8:
            head = b""
            for p in packets:
                head += p._data  # type: ignore[attr-defined]
                if len(head) >= 10:
                    break
            sizes = [vp8_size(head)]
        elif codec == H264:
            sizes = [h264_sps_size(nal) for nal in h264_sps_units(p.payload for p in packets)]
        over = [size for size in sizes if size is not None and too_large(*size, self._max_width)]
        if not over:
            return False
        if "size" not in self._warned:
            self._warned.add("size")
            cap_width, cap_pixels = size_limits(self._max_width)
            log.warning(
                "%scamera: a %dx%d key frame, over the cap of %d wide and %d pixels (webrtc.video_max_width %d): "
                "not decoded, nor anything until a key frame under it",
                self._label,
                *over[0],
                cap_width,
                cap_pixels,
                self._max_width,
            )
        if self._waiting_since is None:
            self._waiting_since = now
        self._why = "size"
        self._ask_pli(now)
        return True

    def _count_frame(self, now: float) -> None:
        """A frame began arriving (whether or not it will be decoded): measure the rate, and decode
        key frames only while it is far over the limit."""
        assert self._max_fps is not None
        if not self._rate_frames:
            self._rate_began = now
        self._rate_frames += 1
        elapsed = now - self._rate_began
        if elapsed < RATE_WINDOW_S:
            return
        self.incoming_fps = fps = (self._rate_frames - 1) / elapsed
        self._rate_began, self._rate_frames = now, 1
        if not self.key_only and fps > KEY_ONLY_ABOVE * self._max_fps:
            self.key_only = True
            if "rate" not in self._warned:
                self._warned.add("rate")
                log.warning(
                    "%scamera: %.0f frames/s arriving, over %g times webrtc.video_max_fps %g: decoding key frames only, "
                    "one every %.1f s at most",
                    self._label,
                    fps,
                    KEY_ONLY_ABOVE,
                    self._max_fps,
                    self._key_interval_s,
                )
            if self._waiting_since is None:
                self._waiting_since, self._why = now, "rate"
            self._ask_pli(now)
        elif self.key_only and fps <= KEY_ONLY_UNTIL * self._max_fps:
            self.key_only = False  # every frame from the next key frame on
            if self._waiting_since is not None:
                self._ask_pli(now)

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


def recover_video(
    receiver: RTCRtpReceiver,
    clock: Callable[[], float] = time.monotonic,
    *,
    max_width: int | None = None,
    max_fps: float | None = None,
    label: str = "",
) -> VideoBuffer | None:
    """Give a video receiver a `VideoBuffer` (aiortc 1.16 has no setting for its jitter buffer; it
    is replaced on the receiver), with these limits (None: none). Call it before media flows, e.g.
    from the "track" event. Returns None, with a warning, where this aiortc has no such attribute
    (its own buffer then stays)."""
    name = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, name):
        log.warning("aiortc's receiver has no %s: lost video packets stall the camera, then smear it", name)
        return None
    codecs: Mapping[int, object] = getattr(receiver, "_RTCRtpReceiver__codecs", {})

    def codec_of(payload_type: int) -> str | None:
        codec = codecs.get(payload_type)
        return getattr(codec, "mimeType", None)

    buffer = VideoBuffer(codec_of, clock=clock, max_width=max_width, max_fps=max_fps, label=label)
    setattr(receiver, name, buffer)
    return buffer
