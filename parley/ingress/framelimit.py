"""The size and rate of video the server takes, whatever a client sends: the hard cap on a frame's
size (`size_limits`, checked on key frames before decoding by `parley.ingress.video`'s buffer) and
what of the decoded frames reaches the session (`FrameLimiter`: at most `webrtc.video_max_fps`,
scaled to `webrtc.video_max_width`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import av

log = logging.getLogger("parley.video")


def size_limits(max_width: int) -> tuple[int, int]:
    """The hard cap on a video frame's size, for a server that asks browsers for at most
    `max_width` wide: (width, pixels). A browser honouring scaleResolutionDownBy sends at most
    `max_width` wide (a browser that rounds its scaling, a few pixels more); a frame twice as wide,
    or of more pixels than a `2 * max_width` square (a tall portrait or window share at
    `max_width` wide fits, up to four times as tall as wide), is no browser's rounding. Frames
    under the cap but wider than `max_width` are decoded and then scaled down; frames over it
    are not decoded at all: decoding costs about its pixel count (and a decoded frame holds 1.5
    bytes a pixel), so it bounds each frame's cost to four times what the server asked for."""
    return 2 * max_width, 4 * max_width * max_width


def too_large(width: int, height: int, max_width: int) -> bool:
    """Whether a `width` x `height` frame is over the hard cap (`size_limits`)."""
    cap_width, cap_pixels = size_limits(max_width)
    return width > cap_width or width * height > cap_pixels


class FrameLimiter:
    """What of a peer's decoded video reaches its session: frames over the size cap
    (`size_limits`) never (they can come only where the buffer could not read a key frame's
    size); the others at most one every 1 / `max_fps` s, the newest (a frame that comes too soon
    is held, replacing one held before, until `due`: the caller hands on `release()` then), scaled
    down to `max_width` wide (even dimensions, the aspect kept) when wider, which is done only to
    the frames handed on.

    Counters (never reset): `delivered`, frames handed on; `too_large`, dropped over the cap;
    `over_rate`, replaced or never released; `scaled`, handed on scaled down.
    """

    def __init__(self, max_width: int, max_fps: float, *, label: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.max_width = max_width
        self.interval_s = 1 / max_fps
        self._label = label
        self._clock = clock
        self._held: av.VideoFrame | None = None
        self._last: float | None = None
        self._warned: set[str] = set()
        self._offered = 0
        """Frames offered since the last one handed on."""
        self.delivered = 0
        self.too_large = 0
        self.over_rate = 0
        self.scaled = 0

    @property
    def due(self) -> float | None:
        """When the held frame may be handed on (on this limiter's clock); None if none is held."""
        if self._held is None:
            return None
        return self._clock() if self._last is None else self._last + self.interval_s

    def offer(self, frame: av.VideoFrame) -> av.VideoFrame | None:
        """A decoded frame: what to hand on now (it, scaled), or None (dropped, or held)."""
        if too_large(frame.width, frame.height, self.max_width):
            self.too_large += 1
            self._warn("size", "a decoded %dx%d frame over the cap of webrtc.video_max_width %d: dropped", frame, self.max_width)
            return None
        now = self._clock()
        self._offered += 1
        if self._last is not None and now - self._last < self.interval_s:
            if self._held is not None:
                self.over_rate += 1
            self._held = frame
            return None
        if self._held is not None:
            self.over_rate += 1
            self._held = None
        return self._deliver(frame, now)

    def release(self) -> av.VideoFrame | None:
        """The held frame, if its time has come (scaled where it must be)."""
        now = self._clock()
        if self._held is None or (self._last is not None and now - self._last < self.interval_s):
            return None
        frame, self._held = self._held, None
        return self._deliver(frame, now)

    def close(self) -> None:
        """Nothing more is handed on: the held frame is dropped."""
        if self._held is not None:
            self.over_rate += 1
            self._held = None

    def _deliver(self, frame: av.VideoFrame, now: float) -> av.VideoFrame:
        if self._last is not None and self._offered > 2:
            self._warn(
                "rate",
                "%d frames decoded in %.2f s, over webrtc.video_max_fps %g: the newest of each %.2f s goes on",
                self._offered,
                now - self._last,
                1 / self.interval_s,
                self.interval_s,
            )
        self._last = now
        self._offered = 0
        self.delivered += 1
        if frame.width <= self.max_width:
            return frame
        width = self.max_width & ~1
        height = max(2, round(frame.height * width / frame.width / 2) * 2)
        self.scaled += 1
        self._warn("scale", "%dx%d frames, wider than webrtc.video_max_width %d: scaled down", frame, self.max_width)
        return frame.reformat(width=width, height=height)  # its pts and time base kept

    def _warn(self, kind: str, message: str, *args: object) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        values: list[object] = []
        for arg in args:
            values.extend((arg.width, arg.height) if isinstance(arg, av.VideoFrame) else (arg,))
        log.warning("%scamera: " + message, self._label, *values)
