"""The server's outgoing audio track: queued Opus packets paced onto the 48 kHz RTP clock.

Invariant: packet n leaves `recv()` at `start + pts_n / 48000` on the injected clock, where pts_n
is the total duration of everything sent before it; when nothing is queued a 20 ms silence packet
keeps the clock (and the browser's jitter buffer) running. Packets are forwarded as they are,
never re-encoded, and `clear()` drops every queued packet at once.

The track is also the one place that knows what was actually played: per tag (a sentence of an
answer) how many samples have left it and when (a `watch` says when each one starts), every packet
that left (`far`, the echo canceller's reference), and the level of what left it lately, which the
session compares with the microphone to tell the assistant's own voice from the user's.

`hold()` stops taking from the queue (silence goes out, nothing is dropped) and `resume()` goes on,
from the start of the sentence that was playing: its packets that had left are queued again, and
no longer count as played, so a sentence heard twice counts once.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from fractions import Fraction

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.echo import FarEnd
from media.opus import RTP_CLOCK_HZ, SILENCE_PACKET
from media.packet import OpusPacket

logger = logging.getLogger(__name__)

SILENCE_SAMPLES = 960
"""Duration of `SILENCE_PACKET` on the RTP clock (20 ms)."""

LATE_S = 0.020
"""A packet released more than this behind its schedule counts in `late_packets`."""

RESYNC_S = 0.5
"""Further behind than this (a stalled loop), the schedule restarts from now instead of bursting."""

TIME_BASE = Fraction(1, RTP_CLOCK_HZ)

LATENESS_BOUNDS_MS = (5, 10, 20, 30, 40)
"""Upper bounds of the lateness buckets `lateness` counts packets in (a last bucket holds the rest)."""

LEVEL_MEMORY_S = 2.0
"""How long the levels of sent audio are remembered (longer than any echo path)."""

UNKNOWN_LEVEL = 0.1
"""The level assumed for a packet that does not say its own (about -20 dBFS RMS: loud speech)."""


@dataclass
class Played:
    """How much of one tag's audio has left the track."""

    samples: int = 0
    last_at: float = 0.0
    """Clock time its latest packet left."""


class PacingTrack(MediaStreamTrack):
    """An audio track that plays queued Opus packets in real time, and silence in between.

    Producers `capture()` packets as fast as they like; aiortc's sender pulls them with `recv()`,
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
        self._queue: deque[tuple[OpusPacket, Hashable | None]] = deque()
        self._played: dict[Hashable, Played] = {}
        self._levels: deque[tuple[float, float]] = deque()
        """(clock time, RMS level) of each speech packet that left, oldest first."""
        self._queued_samples = 0
        self._held = False
        self._replay: list[tuple[OpusPacket, Hashable]] = []
        """The packets of the sentence playing (its tag) that have left: `resume` plays them again."""
        self.far = FarEnd()
        """Every packet that left, on this track's timeline: what the echo canceller removes."""
        self._start: float | None = None
        self._pts = 0
        self._idle = True
        self._drained = asyncio.Event()
        self._drained.set()
        self._watches: list[Watch] = []
        """Who is told when audio starts and when each tag starts playing (`watch`)."""
        self._last_tag: Hashable | None = None
        self.packets_sent = 0
        """Packets returned by `recv()`, silence included."""
        self.late_packets = 0
        """Packets (silence included) released more than `LATE_S` behind their schedule."""
        self.lateness = [0] * (len(LATENESS_BOUNDS_MS) + 1)
        """How many packets left how far behind their schedule, by `LATENESS_BOUNDS_MS` bucket: the
        server's own view of the gaps a listener hears (a packet 30 ms late makes a 50 ms gap)."""

    @property
    def queued_s(self) -> float:
        """Seconds of audio waiting to be sent."""
        return self._queued_samples / RTP_CLOCK_HZ

    def capture(self, packet: OpusPacket, tag: Hashable | None = None) -> None:
        """Queue one packet to be sent after everything already queued. Ignored once stopped.

        A `tag` (e.g. one sentence of an answer) makes `played(tag)` count it once it has left.
        """
        if packet.samples <= 0:
            raise ValueError(f"an Opus packet lasts at least one sample, got samples={packet.samples}")
        if self.readyState != "live":
            return
        self._queue.append((packet, tag))
        self._queued_samples += packet.samples
        self._drained.clear()

    def clear(self) -> int:
        """Drop every queued packet now (interruption); return how many were dropped.

        The queue object is replaced, not emptied, so nothing holding the old one can refill the
        new turn. Producers must still be cancelled first: a late `capture()` lands in the new queue.
        """
        dropped, self._queue = self._queue, deque()
        self._queued_samples = 0
        self._last_tag = None
        self._held = False
        self._replay = []
        self._idle = True
        self._drained.set()
        return len(dropped)

    def hold(self) -> None:
        """Stop playing now (silence goes out); the queue is kept for `resume` or `clear`."""
        self._held = True

    def resume(self, *, rewind: bool = True) -> None:
        """Play on after `hold`: from the start of the sentence that was playing when it held, or
        (`rewind` False) from where it stopped."""
        if not self._held:
            return
        self._held = False
        if self._replay and rewind:
            tag = self._replay[0][1]
            again = sum(packet.samples for packet, _ in self._replay)
            self._queue.extendleft(reversed(self._replay))
            self._queued_samples += again
            played = self._played.get(tag)
            if played is not None:
                played.samples = max(0, played.samples - again)
            self._replay = []
            self._last_tag = None  # the sentence starts (again): on_tag says so
        if self._queue:
            self._drained.clear()

    def played(self, tag: Hashable) -> Played:
        """How much audio queued with `tag` has left the track so far (zero if none)."""
        return self._played.get(tag, Played())

    def stop_counting(self, tag: Hashable) -> None:
        """Stop counting `tag` (its answer is over)."""
        self._played.pop(tag, None)

    def recent_level(self, window_s: float) -> float:
        """The loudest RMS level among speech packets that left within the last `window_s`."""
        since = self._clock() - window_s
        return max((level for at, level in self._levels if at >= since), default=0.0)

    async def wait_for_playout(self) -> None:
        """Wait until the queue is empty and the last queued packet has left `recv()`."""
        await self._drained.wait()

    def stop(self) -> None:
        """End the track: queued audio is dropped, `wait_for_playout()` returns and `recv()` raises."""
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
        self.lateness[bisect.bisect_left(LATENESS_BOUNDS_MS, -1000 * wait)] += 1
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
        if self._queue and not self._held:
            item, tag = self._queue.popleft()
            self._queued_samples -= item.samples
            data, samples = item.data, item.samples
            if not self._queue:
                self._drained.set()
            if data != SILENCE_PACKET:
                self._account(item, tag)
            if self._idle and data != SILENCE_PACKET:
                self._idle = False
                self._fire_first_audio()
        else:
            data, samples = SILENCE_PACKET, SILENCE_SAMPLES
            self._idle = True
        self.far.sent(self._pts, samples, data)
        packet = av.Packet(data)
        packet.pts = packet.dts = self._pts
        packet.time_base = TIME_BASE
        self._pts += samples
        self.packets_sent += 1
        return packet

    def _account(self, packet: OpusPacket, tag: Hashable | None) -> None:
        now = self._clock()
        if tag is not None:
            played = self._played.setdefault(tag, Played())
            played.samples += packet.samples
            played.last_at = now
            if tag != self._last_tag:
                self._last_tag = tag
                self._replay = []
                self._fire_tag(tag)
            self._replay.append((packet, tag))
        self._levels.append((now, UNKNOWN_LEVEL if packet.level is None else packet.level))
        while self._levels and self._levels[0][0] < now - LEVEL_MEMORY_S:
            self._levels.popleft()

    def watch(
        self, *, on_first_audio: Callable[[], None] | None = None, on_tag: Callable[[Hashable], None] | None = None
    ) -> Watch:
        """Be told, until the returned watch is closed: once, when the first audio packet leaves
        `recv()` from now on (`on_first_audio`); and with its tag, whenever a tagged packet that
        starts a sentence leaves (`on_tag`). Several watches may be open at once; a failing
        callback is logged and never stops the audio."""
        watch = Watch(self, on_first_audio, on_tag)
        self._watches.append(watch)
        return watch

    def _fire_tag(self, tag: Hashable) -> None:
        for watch in list(self._watches):
            if watch.on_tag is not None:
                _call(watch.on_tag, tag)

    def _fire_first_audio(self) -> None:
        for watch in list(self._watches):
            callback, watch.on_first_audio = watch.on_first_audio, None
            if callback is not None:
                _call(callback)


class Watch:
    """A listener on a track's playout (`PacingTrack.watch`); a context manager that closes it."""

    def __init__(
        self, track: PacingTrack, on_first_audio: Callable[[], None] | None, on_tag: Callable[[Hashable], None] | None
    ) -> None:
        self._track = track
        self.on_first_audio = on_first_audio
        """Reset to None once it has been called."""
        self.on_tag = on_tag

    def close(self) -> None:
        if self in self._track._watches:
            self._track._watches.remove(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call(callback: Callable[..., None], *args: Hashable) -> None:
    try:
        callback(*args)
    except Exception:
        # A metrics or page callback must never stop the audio.
        logger.exception("a playout callback failed")
