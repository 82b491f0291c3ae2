"""Where the browser's microphone is now, in its own RTP timestamps, judged from packet arrivals.

A push-to-talk release comes over socket.io; the audio spoken up to it comes over RTP. When the
ingress's event loop is busy (many sessions on few cores) or the network queues packets, the
release can be handled before the last of that audio has been decoded, and a turn that was all
speech would be cut short (or found empty). To wait for exactly that audio, the server needs to
know which RTP timestamp the sender had reached when the release was handled.

Each packet gives `arrival - timestamp / rate`: the sender's clock offset plus that packet's
transit delay. The smallest value over the last `WINDOW_S` seconds is the offset with the least
delay seen, so `rate * (now - smallest)` is the timestamp being sent now. (A window, not the
minimum ever, because the two clocks drift apart by up to ~100 ppm.)

Invariants:
- Timestamps are 32-bit and wrap; they are unwrapped here (a step is taken as the nearest of its
  2^32 aliases). `position_now()` counts from `origin`, modulo 2^32: aiortc's decoded frames
  count from the first frame it decoded (its receiver subtracts that frame's timestamp).
- A jump of over `JUMP_S` in either clock (a new stream after renegotiation) starts afresh.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 30.0
JUMP_S = 10.0
WRAP = 1 << 32


def rtp_diff(a: int, b: int) -> int:
    """a - b for 32-bit RTP timestamps, as the nearest signed step (wraps handled)."""
    return (a - b + (WRAP >> 1)) % WRAP - (WRAP >> 1)


class SenderClock:
    """The sender's RTP clock as seen from here (one stream, `rate` ticks a second)."""

    def __init__(self, rate: int = 48000, clock: Callable[[], float] = time.monotonic, *, origin: int | None = 0) -> None:
        self.rate = rate
        self.origin = origin
        """The raw timestamp that positions count from; None while unknown (no position yet)."""
        self._clock = clock
        self._last_raw: int | None = None
        self._last_ext = 0
        self.last_arrival: float | None = None
        self._offsets: deque[tuple[float, float]] = deque()
        """(arrival, arrival - unwrapped timestamp / rate), increasing in the second value."""

    def observe(self, timestamp: int) -> None:
        """A packet with this RTP timestamp has just arrived."""
        now = self._clock()
        if self._last_raw is None:
            ext = timestamp
        else:
            ext = self._last_ext + rtp_diff(timestamp, self._last_raw)
        fresh = self._last_raw is None or abs(ext - self._last_ext) > JUMP_S * self.rate
        if fresh or (self.last_arrival is not None and now - self.last_arrival > JUMP_S):
            self._offsets.clear()
        if fresh or ext >= self._last_ext:  # a reordered (older) packet does not move the stream back
            self._last_raw, self._last_ext = timestamp % WRAP, ext
        self.last_arrival = now
        offset = now - ext / self.rate
        while self._offsets and self._offsets[-1][1] >= offset:
            self._offsets.pop()
        self._offsets.append((now, offset))
        while now - self._offsets[0][0] > WINDOW_S:
            self._offsets.popleft()

    def quiet_s(self) -> float:
        """Seconds since the latest packet arrived (infinite before the first)."""
        return float("inf") if self.last_arrival is None else self._clock() - self.last_arrival

    def position_now(self) -> int | None:
        """The timestamp the sender is sending now (by the least-delayed packet of the window),
        counted from `origin`, modulo 2^32; None before any packet or while the origin is unknown."""
        if not self._offsets or self.origin is None:
            return None
        ext = round((self._clock() - self._offsets[0][1]) * self.rate)
        return (ext - self.origin) % WRAP
