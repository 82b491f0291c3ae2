"""Per-turn latency, named once.

Invariant: every stage time comes from one monotonic clock and is defined here:
- asr: end of recording -> transcript.
- llm_ttft: request -> first text delta.
- first_sentence: request -> first sentence handed to TTS.
- tts_ttfb: sentence handed to TTS -> its first Opus packet (first sentence of the turn).
- voice_to_voice: end of recording (or message sent) -> first speech packet leaves the pacing track.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

STAGES = ("asr", "llm_ttft", "first_sentence", "tts_ttfb", "voice_to_voice")

MetricSink = Callable[[str, float], None]
"""Receives (stage, seconds) as each stage is measured; the ingress turns these into Serve metrics."""


class TurnMetrics(BaseModel):
    """Stage times of one turn in seconds; None where the stage did not happen."""

    asr: float | None = None
    llm_ttft: float | None = None
    first_sentence: float | None = None
    tts_ttfb: float | None = None
    voice_to_voice: float | None = None


class Stopwatch:
    """Seconds since it was made, on the monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        return self._clock() - self.start
