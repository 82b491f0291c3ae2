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

Not every sender sends all the time. A WebAudio microphone in Chromium sends no packet while its
source is silent, nor do Opus DTX and some headsets: no audio is on its way then. So the sender
counts as *sending* only while packets keep coming: a packet is overdue once it is later than the
usual spacing plus the worst delay seen on recent packets (what this host's network and event
loop add), and then only the packets that did arrive are waited for. The margin follows the host:
a loaded event loop delays arrivals, and the margin grows with it, so a slow server is not taken
for a silent sender. (Chromium's timestamps even stand still while it sends nothing, so the
offsets seen before a silence are forgotten when packets come back later than their timestamps
say: `STALL_S`.)

Invariants:
- Timestamps are 32-bit and wrap; they are unwrapped here (a step is taken as the nearest of its
  2^32 aliases). `position_now()` counts from `origin`, modulo 2^32: aiortc's decoded frames
  count from the first frame it decoded (its receiver subtracts that frame's timestamp).
- A jump of over `JUMP_S` in either clock (a new stream after renegotiation) starts afresh.
- `catch_up` waits only for audio that is on its way: packets that arrived and are not yet decoded,
  and, while the sender is sending, the audio it is sending now. It re-judges on every step, so a
  sender that stops during the wait ends the wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from parley.engine.ports import WRAP, rtp_diff

log = logging.getLogger("parley.senderclock")

WINDOW_S = 30.0
JUMP_S = 10.0

SLACK_S = 0.04
"""Audio this close to now is not waited for."""

SANE_S = 10.0
"""Further apart than this, the frames' timestamps and the packets' are not on one clock: no waiting."""

POLL_S = 0.01
"""How often a wait looks again."""

STEP_S = 0.02
"""The spacing of packets until the stream shows its own (Opus in WebRTC: 20 ms)."""

RECENT = 100
"""Packets whose delay sets the margin (two seconds of 20 ms packets)."""

STALL_S = 0.25
"""A packet this much later than its timestamp says, after the one before it: the sender's clock
stood still while it sent nothing (Chromium's WebAudio microphone does this in silence), and the
offsets seen before no longer hold. (A network that held packets back for this long also resets
it; the least-delayed packets after it set the offset again within moments.)"""

GUARD_S = 0.03
"""Added to the worst recent delay before a packet counts as overdue."""

MAX_MARGIN_S = 0.5
"""However late packets have been, a sender this long overdue has stopped."""


class SenderClock:
    """The sender's RTP clock as seen from here (one stream, `rate` ticks a second)."""

    def __init__(
        self,
        rate: int = 48000,
        clock: Callable[[], float] = time.monotonic,
        *,
        origin: int | None = 0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.origin = origin
        """The raw timestamp that positions count from; None while unknown (no position yet)."""
        self._clock = clock
        self._sleep = sleep
        self._last_raw: int | None = None
        self._last_ext = 0
        self._last_arrival: float | None = None
        self._step = round(STEP_S * rate)
        """Timestamp ticks between consecutive packets, as this stream sends them."""
        self._warned = False
        self._offsets: deque[tuple[float, float]] = deque()
        """(arrival, arrival - unwrapped timestamp / rate), increasing in the second value."""
        self._recent: deque[float] = deque(maxlen=RECENT)
        """arrival - timestamp / rate of the latest packets (their delay, plus the clocks' offset)."""

    def observe(self, timestamp: int) -> None:
        """A packet with this RTP timestamp has just arrived."""
        now = self._clock()
        if self._last_raw is None:
            ext = timestamp
        else:
            ext = self._last_ext + rtp_diff(timestamp, self._last_raw)
        fresh = self._last_raw is None or abs(ext - self._last_ext) > JUMP_S * self.rate
        stalled = self._last_arrival is not None and (now - self._last_arrival) - (ext - self._last_ext) / self.rate > STALL_S
        if fresh or stalled or (self._last_arrival is not None and now - self._last_arrival > JUMP_S):
            self._offsets.clear()
            self._recent.clear()
        elif 0 < ext - self._last_ext <= 0.12 * self.rate:
            self._step = ext - self._last_ext
        if fresh or ext >= self._last_ext:  # a reordered (older) packet does not move the stream back
            self._last_raw, self._last_ext = timestamp % WRAP, ext
        self._last_arrival = now
        offset = now - ext / self.rate
        self._recent.append(offset)
        while self._offsets and self._offsets[-1][1] >= offset:
            self._offsets.pop()
        self._offsets.append((now, offset))
        while now - self._offsets[0][0] > WINDOW_S:
            self._offsets.popleft()

    def quiet_s(self) -> float:
        """Seconds since the latest packet arrived (infinite before the first)."""
        return float("inf") if self._last_arrival is None else self._clock() - self._last_arrival

    def margin_s(self) -> float:
        """How late a packet may be before it counts as overdue: the worst delay of the recent
        packets over the least-delayed one's, plus a guard (at most `MAX_MARGIN_S`)."""
        if not self._offsets or not self._recent:
            return MAX_MARGIN_S
        worst = max(self._recent) - self._offsets[0][1]
        return min(MAX_MARGIN_S, max(0.0, worst) + GUARD_S)

    def sending(self) -> bool:
        """Whether packets are still coming: the next one is not overdue."""
        return self.quiet_s() <= self._step / self.rate + self.margin_s()

    def position_now(self) -> int | None:
        """The timestamp the sender is sending now (by the least-delayed packet of the window),
        counted from `origin`, modulo 2^32; None before any packet or while the origin is unknown."""
        if not self._offsets or self.origin is None:
            return None
        ext = round((self._clock() - self._offsets[0][1]) * self.rate)
        return (ext - self.origin) % WRAP

    def arrived_to(self) -> int | None:
        """The timestamp just after the latest packet that arrived, counted from `origin`, modulo
        2^32; None before any packet or while the origin is unknown."""
        if self._last_raw is None or self.origin is None:
            return None
        return (self._last_ext + self._step - self.origin) % WRAP

    async def catch_up(self, heard_to: Callable[[], int | None], *, limit_s: float, who: str = "") -> float:
        """Wait, at most `limit_s`, until the frames fed so far reach the audio that was on its way
        when this was called: what the sender had sent by then, less what it turns out never to
        have sent (it had stopped, or stops during the wait).

        `heard_to()`: the timestamp just after the latest frame fed (counted from `origin`), None
        before any. Returns at once when there is no position yet, when nothing is on its way, or
        when the two clocks are too far apart to trust (a warning, once). Returns the seconds waited.
        """
        sent = self.position_now()
        if sent is None:
            return 0.0
        began = self._clock()
        first: float | None = None
        while True:
            behind = self._behind_s(sent, heard_to())
            if behind is None:
                break
            if first is None:
                first = behind
                if abs(behind) > SANE_S:
                    self._insane(behind, who)
                    return 0.0
            if behind <= SLACK_S or self._clock() - began >= limit_s:
                break
            await self._sleep(POLL_S)
        waited = self._clock() - began
        if first is not None and first > 0.2:
            left = max(0.0, self._behind_s(sent, heard_to()) or 0.0)
            log.info("%s: waited %.2f s for microphone audio (%.2f s behind, %.2f s left)", who, waited, first, left)
        return waited

    def _behind_s(self, sent: int, heard: int | None) -> float | None:
        """How far the frames fed lag the audio on its way, up to `sent` (seconds); None: nothing
        is on its way."""
        target = sent
        if not self.sending():
            arrived = self.arrived_to()
            if arrived is None:
                return None
            target = arrived if rtp_diff(arrived, sent) < 0 else sent
        if heard is None:  # nothing decoded since listening began: wait (a step) while the sender sends
            return 2 * SLACK_S if self.sending() else None
        return rtp_diff(target, heard) / self.rate

    def _insane(self, behind: float, who: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "%s: the microphone's timestamps and its packets are %.1f s apart: no waiting for late audio", who, behind
            )
