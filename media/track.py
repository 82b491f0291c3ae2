"""The server's outgoing audio track: queued Opus packets paced onto the 48 kHz RTP clock.

Invariant: packet n leaves `recv()` at `start + pts_n / 48000` on the injected clock, where pts_n
is the total duration of everything sent before it; when nothing is queued a 20 ms silence packet
keeps the clock (and the browser's jitter buffer) running. Packets are forwarded as they are,
never re-encoded, and `clear()` drops every queued packet at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from fractions import Fraction

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.opus import RTP_CLOCK_HZ, SILENCE_PACKET
from parley.types import OpusPacket

logger = logging.getLogger(__name__)

SILENCE_SAMPLES = 960
"""Duration of `SILENCE_PACKET` on the RTP clock (20 ms)."""

LATE_S = 0.020
"""A packet released more than this behind its schedule counts in `late_packets`."""

RESYNC_S = 0.5
"""Further behind than this (a stalled loop), the schedule restarts from now instead of bursting."""

TIME_BASE = Fraction(1, RTP_CLOCK_HZ)


class PacingTrack(MediaStreamTrack):
    """An audio track that plays queued Opus packets in real time, and silence in between.

    Producers `put()` packets as fast as they like; aiortc's sender pulls them with `recv()`,
    which sleeps until each one is due. The clock and the sleep are injectable so tests run
    faster than real time.
    """

    kind = "audio"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__()
        self._clock = clock
        self._sleep = sleep
        self._queue: deque[OpusPacket] = deque()
        self._queued_samples = 0
        self._start: float | None = None
        self._pts = 0
        self._idle = True
        self._drained = asyncio.Event()
        self._drained.set()
        self.on_first_audio: Callable[[], None] | None = None
        """Called once (then reset to None) when the first packet after silence leaves `recv()`."""
        self.packets_sent = 0
        """Packets returned by `recv()`, silence included."""
        self.late_packets = 0
        """Packets (silence included) released more than `LATE_S` behind their schedule."""

    @property
    def queued_s(self) -> float:
        """Seconds of audio waiting to be sent."""
        return self._queued_samples / RTP_CLOCK_HZ

    def put(self, packet: OpusPacket) -> None:
        """Queue one packet to be sent after everything already queued. Ignored once stopped."""
        if packet.samples <= 0:
            raise ValueError(f"an Opus packet lasts at least one sample, got samples={packet.samples}")
        if self.readyState != "live":
            return
        self._queue.append(packet)
        self._queued_samples += packet.samples
        self._drained.clear()

    def clear(self) -> int:
        """Drop every queued packet now (interruption); return how many were dropped.

        The queue object is replaced, not emptied, so nothing holding the old one can refill the
        new turn. Producers must still be cancelled first: a late `put()` lands in the new queue.
        """
        dropped, self._queue = self._queue, deque()
        self._queued_samples = 0
        self._idle = True
        self._drained.set()
        return len(dropped)

    async def drained(self) -> None:
        """Wait until the queue is empty and the last queued packet has left `recv()`."""
        await self._drained.wait()

    def stop(self) -> None:
        """End the track: queued audio is dropped, `drained()` returns and `recv()` raises."""
        super().stop()
        self.clear()

    async def recv(self) -> av.Packet:
        """The next packet, released at its scheduled time: queued audio, or silence if none.

        Raises MediaStreamError once the track is stopped.
        """
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock()
        if self._start is None:
            self._start = now
        wait = self._start + self._pts / RTP_CLOCK_HZ - now
        if wait > 0:
            await self._sleep(wait)
            if self.readyState != "live":
                raise MediaStreamError
        elif -wait > LATE_S:
            self.late_packets += 1
            if -wait > RESYNC_S:
                self._start -= wait  # put this packet back on schedule; the next one is 20 ms away
        # Chosen after the wait, so audio queued meanwhile goes now and a clear() meanwhile wins.
        return self._next_packet()

    def _next_packet(self) -> av.Packet:
        if self._queue:
            item = self._queue.popleft()
            self._queued_samples -= item.samples
            data, samples = item.data, item.samples
            if not self._queue:
                self._drained.set()
            if self._idle and data != SILENCE_PACKET:
                self._idle = False
                self._fire_first_audio()
        else:
            data, samples = SILENCE_PACKET, SILENCE_SAMPLES
            self._idle = True
        packet = av.Packet(data)
        packet.pts = packet.dts = self._pts
        packet.time_base = TIME_BASE
        self._pts += samples
        self.packets_sent += 1
        return packet

    def _fire_first_audio(self) -> None:
        callback, self.on_first_audio = self.on_first_audio, None
        if callback is None:
            return
        try:
            callback()
        except Exception:
            # A metrics callback must never stop the audio.
            logger.exception("on_first_audio callback failed")
