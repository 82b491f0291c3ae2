"""What speech over an answer means, decided from what is known: a pure function, no session.

`decide(Overheard(...))` says what to do with the answer at each moment the speech is read:
- `speaking` (words not read; the speech so far is this long): past `BACKCHANNEL_MAX_S` it
  interrupts, else wait;
- `peek` (the words so far, read while the speech goes on): a floor word Whisper is sure of
  ("wait", "stop", "hold on") interrupts, anything else waits for a pause;
- `pause` (the words up to a pause): words that are no backchannel interrupt; the answer's own
  words play it on at once; no words play it on if the pause lasts (`NO_WORDS_GRACE_S`: a first
  syllable such as "wait" is followed by more); a backchannel, or words it is not sure of, wait
  for the end of the utterance ("okay... so what about X" is no backchannel);
- `end` (the utterance is over): no transcript, or words that are no backchannel, interrupt;
  anything else resumes the answer, and the speech was no turn.
The word rule itself (`overlap_verdict`: acknowledgements, floor words, how sure) is in
`parley.engine.backchannel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from parley.engine.backchannel import (
    BACKCHANNEL_MAX_S,
    FLOOR_WORDS,
    is_own_words,
    more_words_than_sound,
    overlap_verdict,
    words_of,
)

Moment = Literal["speaking", "peek", "pause", "end"]

Action = Literal["interrupt", "wait", "play_on", "play_on_if_quiet", "resume"]
"""interrupt: stop the answer, the speech is the turn; wait: keep holding; play_on: let the answer
play from where it stopped while the utterance goes on (speech again holds it again);
play_on_if_quiet: the same once the pause has lasted `NO_WORDS_GRACE_S` more; resume: the
utterance is over and was no turn, the answer goes on from the start of its sentence."""

NO_WORDS_GRACE_S = 0.4
"""A held answer whose speech so far has no words plays on once the pause has lasted this long
more (a first syllable the ASR could not read yet, such as "wait", is followed by more speech)."""


@dataclass(frozen=True)
class Overheard:
    """What is known of the speech over an answer at one moment."""

    moment: Moment
    speech_s: float
    """Seconds of speech so far (the VAD's count)."""
    words: str | None = None
    """Its transcript (None: not read, or the transcription failed)."""
    guessing: bool = False
    """Whisper doubted the words (`Transcript.guessing`)."""
    spoken_lately: str = ""
    """What the answer said in the last `ECHO_MEMORY_S` (what may be coming back as echo)."""
    language: str | None = "en"


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str
    """For the log: what was heard, and why it means this."""


def passes(heard: Overheard) -> str | None:
    """Why speech that reads `heard.words` lets the answer go on ("no words", "a backchannel", "not
    sure", "its own voice"), or None (it interrupts, or no words were read)."""
    if heard.words is None:
        return None
    verdict = overlap_verdict(heard.words, heard.speech_s, heard.language, heard.guessing)
    if verdict in ("no words", "a backchannel"):
        return verdict
    if is_own_words(heard.words, heard.spoken_lately):
        return "its own voice"
    return None if verdict == "an interruption" else verdict


def decide(heard: Overheard) -> Decision:
    """What to do with the held answer now (the module's rule)."""
    said = f"{heard.speech_s:.2f} s reading {heard.words!r}"
    if heard.speech_s > BACKCHANNEL_MAX_S:
        return Decision("interrupt", f"over {BACKCHANNEL_MAX_S:g} s of speech")
    if heard.moment == "speaking":
        return Decision("wait", f"{heard.speech_s:.2f} s of speech so far")
    if heard.moment == "peek":
        floor = FLOOR_WORDS.get((heard.language or "en").split("-")[0].lower(), frozenset())
        words = words_of(heard.words or "")
        sure = not heard.guessing and not more_words_than_sound(words, heard.speech_s)
        if sure and any(w in floor for w in words):
            return Decision("interrupt", f"{heard.speech_s:.2f} s so far reading {heard.words!r}")
        return Decision("wait", f"{said} so far")
    why = passes(heard)
    if heard.moment == "end":
        if why is None:
            return Decision("interrupt", f"speech: {said}")
        return Decision("resume", f"{why}: {said}")
    if why is None:
        return Decision("interrupt", said)
    if why == "its own voice":
        return Decision("play_on", f"{why}: {said}")
    if why == "no words":
        return Decision("play_on_if_quiet", f"{why}: {said}")
    return Decision("wait", f"{why}: {said}")
