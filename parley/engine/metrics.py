"""Per-turn latency, named once.

Invariant: every stage time comes from one monotonic clock and is defined here:
- asr: the ASR call whose transcript the turn used: request -> transcript. It may have run
  before the turn ended (started at a pause in speech), so it can overlap the user's silence.
- llm_ttft: request -> first text delta.
- first_sentence: request -> first sentence (or opening clause) handed to TTS.
- tts_ttfb: sentence handed to TTS -> its first Opus packet (first sentence of the turn).
- voice_to_voice: where the user starts waiting -> first speech packet of the answer leaves the
  pacing track. The user starts waiting at the release (push-to-talk: when the key's release event
  reaches the server, so a wait for late microphone audio is inside), at the end of speech
  (hands-free: when the last speech audio reached the server, so the end-of-turn delay is inside),
  or when the typed message reaches the server.
- end_of_turn (hands-free only): end of speech (as above) -> the end-of-turn decision (the
  silence the turn judge gave the pause has passed, or the silence limit). In push-to-talk the
  user decides, so it is not measured.
- turn_to_voice: the server learns the turn is over (the release event arrives, the end-of-turn
  decision is made, or the typed message arrives) -> first speech packet of the answer leaves the
  pacing track. It holds everything the server does after the turn: waiting for late audio, the
  transcript and answer not yet ready, TTS. Push-to-talk and typed: equal to voice_to_voice.

- vision (a text-only model with the vision deployment): the user started talking (the frame was
  taken) -> its scene note came back. It runs while the user speaks, off the critical path.
- vision_wait: how long the user's turn, its words ready, still waited for the scene note (0 when the
  note was there first). What the note added to the answer's latency where the turn was built.

And one figure that is not a wait:
- head_start: how long the work the turn used (transcript and answer, started at a pause in
  speech) had been running when the turn ended; 0 when it started after. What speculation saved.

Besides stage times, a Meter counts turns, errors by stage (asr, llm, tts), sessions and late
audio packets. The ingress's Meter writes Ray Serve metrics; the base one records nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

STAGES = (
    "asr",
    "llm_ttft",
    "first_sentence",
    "tts_ttfb",
    "end_of_turn",
    "turn_to_voice",
    "voice_to_voice",
    "head_start",
    "vision",
    "vision_wait",
)

ERROR_STAGES = ("asr", "llm", "tts")


MICROPHONE_OUTCOMES = ("received", "lost", "red", "fec", "concealed")
"""What became of the browsers' microphone packets: came; never came; of those, repaired from a
later packet's RED block, from the next packet's in-band FEC, or concealed."""


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

    def microphone_packets(self, outcome: str, count: int) -> None:
        """This many more microphone packets had this outcome (one of MICROPHONE_OUTCOMES)."""


class TurnMetrics(BaseModel):
    """Stage times of one turn in seconds; None where the stage did not happen."""

    asr: float | None = None
    llm_ttft: float | None = None
    first_sentence: float | None = None
    tts_ttfb: float | None = None
    end_of_turn: float | None = None
    turn_to_voice: float | None = None
    voice_to_voice: float | None = None
    head_start: float | None = None
    vision_wait: float | None = None


class Stopwatch:
    """Seconds since it was made, on the monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        return self._clock() - self.start


@dataclass(frozen=True)
class TurnTimes:
    """When a turn ended, on the session's clock (the stage definitions are in parley.engine.metrics)."""

    decided: float
    """When the server learned the turn is over: the release event arrived, the end-of-turn
    decision was made (hands-free), or the message arrived."""
    spoke_until: float | None = None
    """Hands-free: when the last speech audio arrived (the end-of-turn delay counts from here)."""
    head_start: float = 0.0
    """How long the work the turn used (transcript and answer) had been running at `decided`."""

    @property
    def anchor(self) -> float:
        """Where the user starts waiting: the end of speech (hands-free), else `decided`."""
        return self.decided if self.spoke_until is None else self.spoke_until
