"""Who has the floor while Parley answers: the user's speech over the answer, as the session's
parts see it. Stateless helpers for the coordinator: opening (or re-closing) a `Hold` on the answer,
holding its audio, and what is known of the speech (`Overheard`) for `parley.engine.overlap.decide`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from parley.engine.backchannel import ECHO_MEMORY_S
from parley.engine.clock import Clock
from parley.engine.ear import Ear
from parley.engine.events import Post, Settled
from parley.engine.hold import Hold
from parley.engine.overlap import Overheard, passes
from parley.engine.ports import SpeechOutput
from parley.engine.services import Services
from parley.engine.turn import Turn
from parley.protocol import Outbound, State

log = logging.getLogger("parley.session")


def open_hold(answering: Turn, speaker: Turn | None, *, ear: Ear, services: Services, clock: Clock, post: Post) -> bool:
    """The user speaks over `answering`'s answer: a new hold on it (reporting `Settled`), or the open
    one holds again after playing on. False if it is held already."""
    hold = answering.hold
    if hold is None or hold.settled:
        hold = answering.hold = Hold(
            speaker.utterance if speaker is not None else None,
            clock=clock,
            report=lambda h, action, why: post(Settled(h, action, why)),
            peek=lambda: ear.read_so_far(services),
            paused_at=lambda: ear.recorder.paused_at,
        )
        hold.start()
        return True
    return hold.rehold()


def hold_audio(
    answering: Turn, output: SpeechOutput | None, ear: Ear, emit: Callable[[Outbound], Awaitable[None]], who: str
) -> Awaitable[None]:
    """Stop the answer's audio now (silence goes out; nothing queued is lost); returns the page's
    "paused" to send. The output is held here, at once, not later: a `play_on` handled after this is
    already known to be stale (the hold says held)."""
    if output is not None:
        output.hold()
    canceller = ear.recorder.canceller
    removed = None if canceller is None else canceller.removed_db
    echo = "" if removed is None else f" (echo canceller: {removed:.0f} dB removed lately)"
    log.info("%s: speech over the answer; it holds%s", who, echo)
    return emit(State(id=answering.delivery.entry.id, state="paused")) if answering.delivery is not None else asyncio.sleep(0)


async def play_on(
    answering: Turn, settled: Settled, output: SpeechOutput | None, emit: Callable[[Outbound], Awaitable[None]], who: str
) -> None:
    """The held answer goes on: from the start of its sentence (`resume`: the speech was no turn) if
    it was still held, or from where it stopped (`play_on`: the utterance goes on)."""
    hold = settled.hold
    if settled.action == "play_on" and hold.held:
        return  # speech came back since that pause: the answer was held again
    if settled.action == "resume":
        log.info("%s: %s; the answer goes on", who, settled.why)
    else:
        log.info("%s: %s; the answer plays on", who, settled.why)
    if output is not None and (hold.held or settled.action == "play_on"):
        output.resume(rewind=settled.action == "resume")
    hold.held = False
    if answering.delivery is not None and answering.running:
        await emit(State(id=answering.delivery.entry.id, state=answering.delivery.entry.state))


def overheard(
    moment: Literal["pause", "end"],
    speaker: Turn,
    answering: Turn | None,
    words: str | None,
    speech_s: float,
    *,
    clock: Clock,
    language: str | None,
) -> Overheard:
    """What is known of `speaker`'s speech over `answering`'s answer at a pause or its end."""
    reply = answering.reply if answering is not None else None
    utterance = speaker.utterance
    return Overheard(
        moment,
        speech_s,
        words=words,
        guessing=words is not None and utterance is not None and utterance.guessing(words),
        spoken_lately="" if reply is None else reply.spoken_since(clock() - ECHO_MEMORY_S),
        language=language,
    )


def speech_goes_on(answering: Turn | None, speech_s: float) -> None:
    """After each microphone frame: speech over a held answer past a backchannel's length interrupts it."""
    hold = answering.hold if answering is not None else None
    if hold is not None and not hold.settled:
        hold.heard(Overheard("speaking", speech_s))


def held_over(answering: Turn | None, speaker: Turn | None) -> Hold | None:
    """The open hold on `answering`'s answer that `speaker`'s speech is over, if any."""
    hold = answering.hold if answering is not None else None
    if hold is None or speaker is None or not hold.over(speaker.utterance):
        return None
    return hold


def lets_answer_on(
    words: str, speaker: Turn | None, answering: Turn | None, *, speech_s: float, clock: Clock, language: str | None
) -> str | None:
    """Why words at a pause of the speech over a held answer let it go on (None: no hold, or they do not)."""
    if speaker is None or held_over(answering, speaker) is None:
        return None
    return passes(overheard("pause", speaker, answering, words, speech_s, clock=clock, language=language))
