"""Per-turn latency, named once.

Invariant: every stage time comes from one monotonic clock and is defined here:
- asr: the ASR call whose transcript the turn used: request -> transcript. It may have run
  before the turn ended (started at a pause in speech), so it can overlap the user's silence.
- llm_ttft: request -> first text delta.
- first_sentence: request -> first sentence (or opening clause) handed to TTS.
- tts_ttfb: sentence handed to TTS -> its first Opus packet (first sentence of the turn).
- voice_to_voice: end of the user's turn -> first speech packet leaves the pacing track. The end
  of the turn is the key release (push-to-talk), the end of speech (hands-free: the silence that
  confirms the turn is part of this time), or the message being sent (typed).

Besides stage times, a Meter counts turns, errors by stage (asr, llm, tts), sessions and late
audio packets. The ingress's Meter writes Ray Serve metrics; the base one records nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

STAGES = ("asr", "llm_ttft", "first_sentence", "tts_ttfb", "voice_to_voice")

ERROR_STAGES = ("asr", "llm", "tts")


class Meter:
    """Where sessions and the server report what they measure. This base records nothing."""

    def stage(self, stage: str, seconds: float) -> None:
        """One stage of one turn took `seconds` (stage is one of STAGES)."""

    def turn(self) -> None:
        """A turn started."""

    def error(self, stage: str) -> None:
        """A stage failed for a turn (stage is one of ERROR_STAGES)."""

    def sessions(self, count: int) -> None:
        """This many browsers are connected now."""

    def late_packets(self, count: int) -> None:
        """This many more audio packets left a pacing track late."""


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
