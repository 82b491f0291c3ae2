"""What the turn engine needs of its transport, as small protocols the engine owns.

The engine never imports a web server, socket.io, aiortc or Ray. A transport (the ingress's WebRTC
peer, or a test) gives a session:
- microphone audio and camera frames, through the session's `MediaSink` side (`on_audio_frame`,
  `on_video_frame`), and a `SenderClock` that says where the browser's microphone stream is;
- a `SpeechOutput` where answers are spoken (LiveKit's `AudioOutput` is the model): packets are
  `capture`d in order, `clear` drops what is queued, `wait_for_playout` waits until the last one left,
  and a `watch` says when audio starts and when each sentence (`SentenceTag`) starts playing;
- an `Emit` for the page: one protocol event at a time (`parley.protocol`).

`media.track.PacingTrack` is the speech output in production; `parley.ingress.senderclock.SenderClock`
the sender clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import av
import numpy as np

from media.echo import FarEnd
from media.packet import OpusPacket

WRAP = 1 << 32
"""RTP timestamps are 32-bit and wrap."""

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Sends one socket.io event (name, payload) to the session's page."""


def rtp_diff(a: int, b: int) -> int:
    """a - b for 32-bit RTP timestamps, as the nearest signed step (wraps handled)."""
    return (a - b + (WRAP >> 1)) % WRAP - (WRAP >> 1)


@dataclass(frozen=True)
class SentenceTag:
    """What a packet of an answer is: sentence `index` of reply `reply`. The output counts what
    it played by tag, so a reply can tell which of its words were heard."""

    reply: str
    index: int


class Played(Protocol):
    samples: int
    """48 kHz samples of the tag's audio that have left."""
    last_at: float
    """When the last of them left (the output's clock)."""


class SpeechOutput(Protocol):
    """Where a session's speech goes: one peer connection's audio track."""

    far: FarEnd
    """Every packet that left, on the output's timeline: what the echo canceller removes."""

    def capture(self, packet: OpusPacket, tag: Hashable | None = None) -> None:
        """Queue one packet after everything already queued."""

    def clear(self) -> int:
        """Drop every queued packet now; returns how many."""

    async def wait_for_playout(self) -> None:
        """Until the queue is empty and its last packet has left."""

    def played(self, tag: Hashable) -> Played:
        """How much of `tag`'s audio has left so far."""

    def stop_counting(self, tag: Hashable) -> None:
        """Stop counting `tag`."""

    def recent_level(self, window_s: float) -> float:
        """The loudest level of what left within the last `window_s`."""

    def hold(self) -> None:
        """Send silence now; keep the queue."""

    def resume(self, *, rewind: bool = True) -> None:
        """Play on after `hold`: from the start of the sentence it held in, or where it stopped."""

    def watch(
        self, *, on_first_audio: Callable[[], None] | None = None, on_tag: Callable[[Hashable], None] | None = None
    ) -> AbstractContextManager[Any]:
        """Be told when audio starts (once) and when each tag starts playing, until closed."""


class SenderClock(Protocol):
    """Where the browser's microphone stream is now, in its own RTP timestamps."""

    rate: int

    def sending(self) -> bool:
        """Whether packets are still arriving."""

    def arrived_to(self) -> int | None:
        """Where the audio that has arrived ends (None before the first packet)."""

    async def catch_up(self, heard_to: Callable[[], int | None], *, limit_s: float, who: str = "") -> float:
        """Wait (at most `limit_s`) until what was heard reaches what the sender had sent by now."""


class MediaSink(Protocol):
    """What a peer connection sees of its session: where media goes in and speech comes out.
    `parley.engine.session.Session` is one."""

    id: str

    @property
    def listening(self) -> bool:
        """Whether microphone audio is wanted now (push-to-talk between turns: it is not)."""

    def on_audio_frame(self, frame: av.AudioFrame) -> None:
        """Every decoded microphone frame."""

    def on_video_frame(self, frame: av.VideoFrame) -> None:
        """Every decoded camera or screen frame."""

    def connect_microphone(self, clock: SenderClock, preroll: Callable[[], np.ndarray] | None = None) -> None:
        """The microphone's sender clock, and the audio it kept while nobody listened."""

    def connect_output(self, output: SpeechOutput) -> None:
        """Speak through this output from now on."""

    def disconnect_output(self, output: SpeechOutput) -> None:
        """That output is gone."""
