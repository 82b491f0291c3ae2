"""Speech over an answer (hands-free): hold the answer at once, then settle what the speech was.

Invariants:
- A hold is settled exactly once. Words that interrupt (`overlap_verdict`, read at any pause), a
  floor word read while the speech goes on (`_peek`, every `PEEK_EVERY_S`), or more than
  `BACKCHANNEL_MAX_S` of speech interrupt the answer, and the speech becomes the turn. An
  utterance that ends as no interruption (a backchannel, no words, words it is not sure of) or
  with the answer's own words (`parley.engine.backchannel`) resumes the answer and is no turn.
- Until then, a pause whose speech had no words or the answer's own words lets the answer play on
  where it stopped, and speech coming back holds it again; a resume from a hold still holding
  starts the sentence over (the output replays it and counts it once).
- A hold not settled within `HOLD_LIMIT_S` (its transcript never came) is an interruption.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from parley.engine.backchannel import (
    BACKCHANNEL_MAX_S,
    ECHO_MEMORY_S,
    FLOOR_WORDS,
    is_own_words,
    more_words_than_sound,
    overlap_verdict,
    words_of,
)
from parley.engine.utterance import Utterance
from parley.protocol import State

if TYPE_CHECKING:
    from parley.engine.session import Session

log = logging.getLogger("parley.session")

NO_WORDS_GRACE_S = 0.4
"""A held answer whose speech so far has no words plays on once the pause has lasted this long
more (a first syllable the ASR could not read yet, such as "wait", is followed by more speech)."""

PEEK_EVERY_S = 0.35
"""While speech over an answer goes on, what has been said so far is read this often (at most
`PEEKS` times): a clear "wait" or "stop" interrupts then, not only once the speech pauses."""
PEEKS = 3

HOLD_LIMIT_S = 4.0
"""A hold not settled by then (the transcript never came) becomes an interruption."""


@dataclass
class Hold:
    """An answer held because the user spoke over it: settled once, when the utterance ends (or
    sooner, when it is plainly an interruption)."""

    utterance: Utterance | None
    held: bool = True
    """Whether its audio is stopped now (a pause with no words of the user's lets it play on)."""


class Overlap:
    """One session's speech over its answer: at most one open `Hold`, and how it is settled."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self.hold: Hold | None = None
        """The answer held while the user speaks over it, until that is settled."""

    def forget(self) -> None:
        """The answer ended or was interrupted: nothing is held any more."""
        self.hold = None

    def holds(self, utterance: Utterance | None) -> bool:
        """Whether this utterance is speech over a held answer."""
        return self.hold is not None and self.hold.utterance is utterance

    def start(self, utterance: Utterance | None) -> None:
        """The user speaks over the answer: stop its audio now, and weigh what they say."""
        s = self._session
        hold = self.hold
        if hold is None:
            hold = self.hold = Hold(utterance=utterance)
            s.spawn(self._limit(hold))
            s.spawn(self._peek(hold))
        elif hold.held:
            return
        hold.held = True
        if s.output is not None:
            s.output.hold()
        canceller = s.recorder.canceller
        echo = "" if canceller is None else f" (echo canceller: {_db(canceller.removed_db)} removed lately)"
        log.info("session %s: speech over the answer; it holds%s", s.id[:8], echo)
        answer = s.answering
        if answer is not None:
            s.spawn(s.emit(State(id=answer.entry.id, state="paused")))

    def too_long(self, speech_s: float) -> None:
        """Called with the utterance's speech so far: past a backchannel's length it interrupts."""
        if self.hold is not None and speech_s > BACKCHANNEL_MAX_S:
            self._session.spawn(self.settle(self.hold, goes_on=False, why=f"over {BACKCHANNEL_MAX_S:g} s of speech"))

    def passes(self, words: str, speech_s: float, guessing: bool = False) -> str | None:
        """Why speech over the answer lets it go on ("no words", "a backchannel", "not sure", "its
        own voice"), or None; `guessing`: Whisper doubted the words."""
        s = self._session
        verdict = overlap_verdict(words, speech_s, s.settings.language, guessing)
        if verdict in ("no words", "a backchannel"):
            return verdict
        answer = s.answering
        if answer is not None and is_own_words(words, answer.reply.spoken_since(s.clock() - ECHO_MEMORY_S)):
            return "its own voice"
        return None if verdict == "an interruption" else verdict

    async def heard_at_pause(self, utterance: Utterance, words: str) -> bool:
        """The transcript of a held utterance up to a pause: True if it can make no turn (yet).
        Words that are no backchannel interrupt at once; no words, or the answer's own, play on
        now; a backchannel waits for the end of the utterance ("okay... so what about X" is no
        backchannel), unanswered."""
        hold, recorder = self.hold, self._session.recorder
        if hold is None or hold.utterance is not utterance:
            return False
        speech_s = recorder.speech_s
        why = self.passes(words, speech_s, utterance.guessing(words))
        if why is None:
            await self.settle(hold, goes_on=False, why=f"{speech_s:.2f} s reading {words!r}")
            return False
        if why == "its own voice":
            self._release(hold, f"{why}: {speech_s:.2f} s reading {words!r}")
        elif why == "no words":
            # Maybe the first syllable of more ("wait, ... stop"): only a pause that goes on lets it play.
            paused_at = recorder.paused_at

            async def later() -> None:
                await asyncio.sleep(NO_WORDS_GRACE_S)
                if recorder.paused_at == paused_at and paused_at is not None:
                    self._release(hold, f"{why}: {speech_s:.2f} s reading {words!r}")

            self._session.spawn(later())
        return True

    async def weigh(self, words: str | None, speech_s: float, guessing: bool = False) -> bool:
        """The held utterance ended: settle by what was said (None: the transcript failed; `guessing`:
        Whisper doubted it); True if the answer goes on."""
        hold = self.hold
        if hold is None:
            return False
        why = None if words is None else self.passes(words, speech_s, guessing)
        await self.settle(hold, why is not None, why=f"{why or 'speech'}: {speech_s:.2f} s reading {words!r}")
        return why is not None

    async def settle(self, hold: Hold, goes_on: bool, why: str) -> None:
        """Resume the held answer (a backchannel, no words, its own voice: no turn; from the start of
        its sentence if it was still holding) or interrupt it (the speech is the turn)."""
        s = self._session
        if self.hold is not hold:
            return  # settled already, or the answer ended
        self.hold = None
        if not goes_on:
            log.info("session %s: barge-in (%s)", s.id[:8], why)
            await s.interrupt(keep_utterance=True)
            return
        log.info("session %s: %s; the answer goes on", s.id[:8], why)
        if hold.utterance is not None:
            await s.drop_utterance(hold.utterance)
        if hold.held and s.output is not None:
            s.output.resume(rewind=True)
        await s.show_answer_state()
        s.rest_if_idle()

    async def _limit(self, hold: Hold) -> None:
        """A hold still holding after HOLD_LIMIT_S (its transcript never came) interrupts."""
        await asyncio.sleep(HOLD_LIMIT_S)
        if hold.held:
            await self.settle(hold, goes_on=False, why=f"not settled within {HOLD_LIMIT_S:g} s")

    async def _peek(self, hold: Hold) -> None:
        """While the speech over the answer goes on, read it so far: a floor word Whisper is not
        guessing at ("wait", "stop", "hold on") interrupts at once. Nothing else is settled here."""
        s, recorder = self._session, self._session.recorder
        floor = FLOOR_WORDS.get((s.settings.language or "en").split("-")[0].lower(), frozenset())
        for _ in range(PEEKS):
            await asyncio.sleep(PEEK_EVERY_S)
            start = recorder.utterance
            if self.hold is not hold or not hold.held or start is None or not recorder.speaking:
                return
            try:
                heard = await s.services.transcribe(recorder.speech_audio(start, recorder.tape.end))
            except Exception:
                return  # the utterance's own transcript settles it
            words = words_of(heard.text)
            sure = not heard.guessing and not more_words_than_sound(words, recorder.speech_s)
            if self.hold is hold and sure and any(w in floor for w in words):
                await self.settle(hold, goes_on=False, why=f"{recorder.speech_s:.2f} s so far reading {heard.text!r}")
                return

    def _release(self, hold: Hold, why: str) -> None:
        """At a pause, what was heard was no speech of the user's (no words, or the answer's own):
        play on from where it stopped, at once. The hold stays open until the utterance ends:
        speech coming back holds again."""
        s = self._session
        if self.hold is not hold or not hold.held:
            return
        hold.held = False
        if s.output is not None:
            s.output.resume(rewind=False)
        log.info("session %s: %s; the answer plays on", s.id[:8], why)
        s.spawn(s.show_answer_state())


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} dB"
