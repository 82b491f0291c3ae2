"""The typed events a session's parts report to its coordinator (which handles them one at a time, in order).

Each part reports upward only by posting these (`Post`); none of them holds the session or the coordinator.
- the ear (`parley.engine.ear`): speech started, lasted long enough to count over an answer,
  paused, resumed, ended; a pause judged;
- a turn's speculation: the words up to a pause were read;
- a hold (`parley.engine.hold`): what speech over an answer came to;
- the delivery (`parley.engine.delivery`): the answer's first audio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from parley.engine.metrics import TurnTimes
from parley.engine.overlap import Action

if TYPE_CHECKING:
    from parley.engine.hold import Hold
    from parley.engine.recorder import SpeechMark
    from parley.engine.turn import Turn


@dataclass(frozen=True)
class SpeechStarted:
    """An utterance starts at tape sample `sample` (hands-free speech, or the talk key)."""

    sample: int
    paid: bool = False
    """A key press already took the turn from the user's budget."""


@dataclass(frozen=True)
class SpeechLasted:
    """The utterance has had enough speech to hold an answer (`turn.interruption.min_speech_s`)."""


@dataclass(frozen=True)
class SpeechPaused:
    sample: int


@dataclass(frozen=True)
class SpeechResumed:
    sample: int
    thought: bool
    """The pause before it was long enough to be a thinking pause."""


@dataclass(frozen=True)
class SpeechEnded:
    """The utterance is over (the key came up, the end-of-turn silence, the recording limit)."""

    mark: SpeechMark
    times: TurnTimes


@dataclass(frozen=True)
class PauseJudged:
    """Hands-free: the pause that began at `paused_at` ends the turn after `wait_s` of silence."""

    paused_at: int
    wait_s: float


@dataclass(frozen=True)
class PauseHeard:
    """The words of `turn` up to the pause at `until` (its speculation's transcript)."""

    turn: Turn
    until: int
    words: str


@dataclass(frozen=True)
class Settled:
    """Speech over `hold`'s answer came to `action` (`parley.engine.overlap.decide`)."""

    hold: Hold
    action: Action
    why: str


@dataclass(frozen=True)
class FirstAudio:
    """The first audio of `turn`'s answer left for the speaker."""

    turn: Turn


Event = (
    SpeechStarted | SpeechLasted | SpeechPaused | SpeechResumed | SpeechEnded | PauseJudged | PauseHeard | Settled | FirstAudio
)

Post = Callable[[Event], None]
"""How a part reports an event to its coordinator."""
