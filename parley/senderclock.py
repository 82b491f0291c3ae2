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

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("parley.senderclock")

WINDOW_S = 30.0
JUMP_S = 10.0
WRAP = 1 << 32

SLACK_S = 0.04
"""Audio this close to now is not waited for."""

SANE_S = 10.0
"""Further apart than this, the frames' timestamps and the packets' are not on one clock: no waiting."""

QUIET_S = 0.5
"""No packet for this long: the sender has stopped (a muted microphone), so nothing is on its way."""


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
        self._last_arrival: float | None = None
        self._warned = False
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
        if fresh or (self._last_arrival is not None and now - self._last_arrival > JUMP_S):
            self._offsets.clear()
        if fresh or ext >= self._last_ext:  # a reordered (older) packet does not move the stream back
            self._last_raw, self._last_ext = timestamp % WRAP, ext
        self._last_arrival = now
        offset = now - ext / self.rate
        while self._offsets and self._offsets[-1][1] >= offset:
            self._offsets.pop()
        self._offsets.append((now, offset))
        while now - self._offsets[0][0] > WINDOW_S:
            self._offsets.popleft()

    def quiet_s(self) -> float:
        """Seconds since the latest packet arrived (infinite before the first)."""
        return float("inf") if self._last_arrival is None else self._clock() - self._last_arrival

    def position_now(self) -> int | None:
        """The timestamp the sender is sending now (by the least-delayed packet of the window),
        counted from `origin`, modulo 2^32; None before any packet or while the origin is unknown."""
        if not self._offsets or self.origin is None:
            return None
        ext = round((self._clock() - self._offsets[0][1]) * self.rate)
        return (ext - self.origin) % WRAP

    async def catch_up(self, heard_to: Callable[[], int | None], *, limit_s: float, who: str = "") -> None:
        """Wait, at most `limit_s`, until the frames fed so far reach where the sender is now.

        `heard_to()`: the timestamp just after the latest frame fed (counted from `origin`), None
        before any. Returns at once when there is no position yet, when the sender has gone quiet
        (nothing is on its way), or when the two clocks are too far apart to trust (a warning, once).
        """
        target = self.position_now()
        if target is None or self.quiet_s() > QUIET_S:
            return

        def behind_s() -> float:
            heard = heard_to()
            return limit_s if heard is None else rtp_diff(target, heard) / self.rate

        behind = behind_s()
        if abs(behind) > SANE_S:
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s: the microphone's timestamps and its packets are %.1f s apart: no waiting for late audio", who, behind
                )
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        while behind_s() > SLACK_S and loop.time() - began < limit_s:
            await asyncio.sleep(0.02)
        if behind > 0.2:
            waited, left = loop.time() - began, max(0.0, behind_s())
            log.info("%s: waited %.2f s for microphone audio (%.2f s behind, %.2f s left)", who, waited, behind, left)
