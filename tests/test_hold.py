"""Speech over an answer: the decision function as a table and the `Hold` on stepped time (the
session's holds end to end: tests/test_hold_session.py).

`decide` is pure, so its rule is a table (`parley.engine.backchannel` holds the word rule it
applies). A `Hold` runs on a `SteppedClock`: time moves only when a test moves it, so its limit,
its peeks and its no-words grace are asserted at their exact times, without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ParamSpec

import pytest

from parley.engine.hold import PEEK_EVERY_S, PEEKS, Hold
from parley.engine.overlap import NO_WORDS_GRACE_S, Action, Overheard, decide
from tests.support.clock import SteppedClock

P = ParamSpec("P")

STORY = "On day two the dragon baked bread for the king."

# -- the decision function -----------------------------------------------------------------------

DECISIONS: list[tuple[Overheard, Action]] = [
    # speaking: words not read yet; its length alone decides
    (Overheard("speaking", 1.3), "interrupt"),
    (Overheard("speaking", 1.0), "wait"),
    (Overheard("speaking", 1.2), "wait"),  # past 1.2 s, not at it
    # peek: the words so far, while the speech goes on
    (Overheard("peek", 0.6, words="Wait, stop."), "interrupt"),
    (Overheard("peek", 0.6, words="Wait, stop.", guessing=True), "wait"),
    (Overheard("peek", 0.1, words="Wait, stop."), "wait"),  # two syllables in 0.1 s: Whisper's guess
    (Overheard("peek", 0.4, words="Okay."), "wait"),
    (Overheard("peek", 0.3, words=""), "wait"),
    (Overheard("peek", 1.5, words="Okay."), "interrupt"),  # too long for a backchannel, whatever it reads
    # pause: the words up to a pause in it
    (Overheard("pause", 0.4, words="Mm-hmm."), "wait"),
    (Overheard("pause", 0.3, words="Yeah."), "wait"),
    (Overheard("pause", 0.3, words=""), "play_on_if_quiet"),
    (Overheard("pause", 0.3, words="[cough]"), "play_on_if_quiet"),
    (Overheard("pause", 0.9, words="the dragon baked bread", spoken_lately=STORY), "play_on"),
    (Overheard("pause", 0.9, words="the dragon baked bread"), "interrupt"),  # not what it said: the user's
    (Overheard("pause", 1.0, words="Wait, what about the second one?"), "interrupt"),
    (Overheard("pause", 0.3, words="here"), "wait"),  # a misread "yeah": not sure
    (Overheard("pause", 0.9, words="Louder please"), "interrupt"),  # unsure only while as short as a backchannel
    # end: the utterance is over
    (Overheard("end", 0.4, words="Mm-hmm."), "resume"),
    (Overheard("end", 0.4, words=None), "interrupt"),  # the transcript failed
    (Overheard("end", 0.4, words="Stop."), "interrupt"),
    (Overheard("end", 0.3, words="No."), "resume"),  # LONE_NO: Whisper's "mm-hmm" over Parley's voice
    (Overheard("end", 0.4, words="No, no."), "interrupt"),
    (Overheard("end", 0.8, words="No."), "interrupt"),  # a lone "no" as long as a word that means it
    (Overheard("end", 0.3, words=""), "resume"),  # a cough
    (Overheard("end", 0.9, words="the dragon baked bread", spoken_lately=STORY), "resume"),
    (Overheard("end", 1.5, words="Mm-hmm."), "interrupt"),
]


@pytest.mark.parametrize(
    ("heard", "action"), DECISIONS, ids=lambda v: f"{v.moment}-{v.speech_s}-{v.words!r}" if isinstance(v, Overheard) else v
)
def test_decide(heard: Overheard, action: Action) -> None:
    decision = decide(heard)
    assert decision.action == action, decision.why
    assert decision.why


def test_decide_is_pure() -> None:
    heard = Overheard("pause", 0.9, words="the dragon baked bread", spoken_lately=STORY)
    assert decide(heard) == decide(heard) == decide(Overheard("pause", 0.9, words="the dragon baked bread", spoken_lately=STORY))


# -- a Hold on stepped time ----------------------------------------------------------------------


class Reports:
    """A hold's `report`: what it said, in order."""

    def __init__(self) -> None:
        self.said: list[tuple[Action, str]] = []
        self.holds: list[Hold] = []

    def __call__(self, hold: Hold, action: Action, why: str) -> None:
        self.holds.append(hold)
        self.said.append((action, why))

    @property
    def actions(self) -> list[Action]:
        return [action for action, _ in self.said]


class Peeks:
    """A scripted peek: returns `reads` (the last one again once they run out), counting its calls."""

    def __init__(self, *reads: Overheard | None) -> None:
        self.reads = list(reads)
        self.calls = 0
        self.at: list[float] = []

    def bind(self, clock: SteppedClock) -> Callable[[], Awaitable[Overheard | None]]:
        async def peek() -> Overheard | None:
            self.calls += 1
            self.at.append(clock())
            return self.reads[min(self.calls, len(self.reads)) - 1]

        return peek


WAITING = Overheard("peek", 0.5, words="")
"""A peek that decides nothing (no words yet)."""
OWN_WORDS = Overheard("pause", 0.9, words="the dragon baked bread", spoken_lately=STORY)
MM_HMM_END = Overheard("end", 0.4, words="Mm-hmm.")


def started(
    clock: SteppedClock, peeks: Peeks, *, paused_at: Callable[[], int | None] = lambda: None, start: bool = True
) -> tuple[Hold, Reports]:
    reports = Reports()
    hold = Hold(None, clock=clock, report=reports, peek=peeks.bind(clock), paused_at=paused_at)
    if start:
        hold.start()
    return hold, reports


async def test_a_hold_never_settled_interrupts_at_its_limit() -> None:
    clock, peeks = SteppedClock(), Peeks(WAITING)
    hold, reports = started(clock, peeks)
    await clock.advance(3.9)
    assert reports.said == [] and hold.held and not hold.settled
    await clock.advance(0.2)
    assert reports.actions == ["interrupt"] and "not settled within 4 s" in reports.said[0][1]
    assert reports.holds == [hold] and hold.settled
    assert clock.woken.count(4.0) == 1, clock.woken  # at its own time, not at the step's end
    await clock.advance(10)
    assert reports.actions == ["interrupt"], "once"
    assert clock.pending == 0


async def test_a_hold_that_played_on_is_not_interrupted_by_its_limit() -> None:
    clock, peeks = SteppedClock(), Peeks(WAITING)
    hold, reports = started(clock, peeks)
    await clock.advance(1.0)
    assert hold.heard(OWN_WORDS).action == "play_on"
    assert reports.actions == ["play_on"] and not hold.held and not hold.settled
    await clock.advance(10)
    assert reports.actions == ["play_on"]
    assert peeks.calls == 2, "no peek once it plays on"  # at 0.35 and 0.7 s


async def test_no_words_at_a_pause_play_on_once_the_pause_has_lasted() -> None:
    clock, peeks = SteppedClock(), Peeks(None)
    hold, reports = started(clock, peeks, paused_at=lambda: 16000)
    await clock.advance(0.5)
    decision = hold.heard(Overheard("pause", 0.3, words=""))
    assert decision.action == "play_on_if_quiet"
    await clock.advance(0)
    assert reports.said == [], "not at once: a first syllable is followed by more"
    await clock.advance(NO_WORDS_GRACE_S - 0.01)
    assert reports.said == []
    await clock.advance(0.02)
    assert reports.actions == ["play_on"] and not hold.held and not hold.settled
    assert clock.woken[-1] == pytest.approx(0.5 + NO_WORDS_GRACE_S)


@pytest.mark.parametrize("then", [None, 24000], ids=["speaking again", "a later pause"])
async def test_no_words_at_a_pause_do_not_play_on_once_speech_came_back(then: int | None) -> None:
    clock, peeks = SteppedClock(), Peeks(None)
    paused: list[int | None] = [16000]
    hold, reports = started(clock, peeks, paused_at=lambda: paused[0])
    hold.heard(Overheard("pause", 0.3, words=""))
    await clock.advance(NO_WORDS_GRACE_S / 2)
    paused[0] = then
    await clock.advance(NO_WORDS_GRACE_S)
    assert reports.said == [] and hold.held


async def test_a_sure_floor_word_read_while_speaking_interrupts_at_the_first_peek() -> None:
    clock, peeks = SteppedClock(), Peeks(Overheard("peek", 0.6, words="Wait, stop."))
    hold, reports = started(clock, peeks)
    await clock.advance(PEEK_EVERY_S - 0.01)
    assert peeks.calls == 0 and reports.said == []
    await clock.advance(0.02)
    assert peeks.at == [pytest.approx(PEEK_EVERY_S)]
    assert reports.actions == ["interrupt"] and "Wait, stop." in reports.said[0][1] and hold.settled
    await clock.advance(10)
    assert peeks.calls == 1 and reports.actions == ["interrupt"]
    assert clock.pending == 0, "its limit was cancelled"


@pytest.mark.parametrize(
    "read",
    [Overheard("peek", 0.4, words="Okay."), Overheard("peek", 0.6, words="Wait, stop.", guessing=True)],
    ids=["okay", "a guessed stop"],
)
async def test_peeks_that_read_no_sure_floor_word_never_interrupt_and_stop_after_peeks(read: Overheard) -> None:
    clock, peeks = SteppedClock(), Peeks(read)
    hold, reports = started(clock, peeks)
    await clock.advance(3.5)
    assert reports.said == [] and hold.held
    assert peeks.calls == PEEKS == 3
    assert peeks.at == [pytest.approx(PEEK_EVERY_S * (n + 1)) for n in range(PEEKS)]


async def test_a_peek_that_finds_no_speech_stops_peeking() -> None:
    clock, peeks = SteppedClock(), Peeks(None, Overheard("peek", 0.6, words="Wait, stop."))
    hold, reports = started(clock, peeks)
    await clock.advance(3.5)
    assert peeks.calls == 1 and reports.said == [] and hold.held


async def test_a_peek_that_fails_stops_peeking() -> None:
    clock, calls = SteppedClock(), []

    async def failing() -> Overheard | None:
        calls.append(clock())
        raise RuntimeError("ASR went away")

    reports = Reports()
    hold = Hold(None, clock=clock, report=reports, peek=failing, paused_at=lambda: None)
    hold.start()
    await clock.advance(3.5)
    assert len(calls) == 1 and reports.said == [] and hold.held


async def test_a_hold_is_settled_exactly_once() -> None:
    clock, peeks = SteppedClock(), Peeks(Overheard("peek", 0.6, words="Wait, stop."))
    hold, reports = started(clock, peeks, paused_at=lambda: 16000)
    assert hold.heard(MM_HMM_END).action == "resume"
    assert reports.actions == ["resume"] and hold.settled and not hold.over(None)
    # what comes later is still decided, but reported no more
    assert hold.heard(Overheard("end", 0.4, words="Stop.")).action == "interrupt"
    assert hold.heard(Overheard("speaking", 2.0)).action == "interrupt"
    assert hold.heard(OWN_WORDS).action == "play_on"
    assert hold.heard(Overheard("pause", 0.3, words="")).action == "play_on_if_quiet"
    await clock.advance(10)
    assert reports.actions == ["resume"]
    assert peeks.calls == 0, "its peeks were cancelled"
    assert clock.pending == 0
    assert not hold.rehold()


async def test_closing_a_hold_cancels_its_timers() -> None:
    clock, peeks = SteppedClock(), Peeks(Overheard("peek", 0.6, words="Wait, stop."))
    hold, reports = started(clock, peeks, paused_at=lambda: 16000)
    hold.heard(Overheard("pause", 0.3, words=""))  # a no-words grace timer too
    await clock.advance(0.1)
    assert clock.pending == 3  # the limit, the next peek, the grace
    hold.close()
    await clock.advance(10)
    assert reports.said == [] and peeks.calls == 0 and clock.pending == 0
    hold.heard(MM_HMM_END)
    assert reports.said == [], "a closed hold reports nothing"


async def test_speech_again_after_playing_on_holds_again_once() -> None:
    clock, peeks = SteppedClock(), Peeks(WAITING)
    hold, reports = started(clock, peeks)
    assert not hold.rehold(), "held already"
    hold.heard(OWN_WORDS)
    assert not hold.held
    assert hold.rehold() and hold.held
    assert not hold.rehold() and hold.held
    hold.heard(OWN_WORDS)  # its own voice again: it plays on again
    assert reports.actions == ["play_on", "play_on"] and not hold.held
    hold.heard(MM_HMM_END)
    assert reports.actions == ["play_on", "play_on", "resume"]
    assert not hold.rehold() and not hold.held


async def test_the_stepped_clock_wakes_sleepers_in_time_order_at_their_own_times() -> None:
    clock = SteppedClock()
    seen: list[tuple[str, float]] = []

    async def sleeper(name: str, *naps: float) -> None:
        for nap in naps:
            await clock.sleep(nap)
            seen.append((name, clock()))

    tasks = [asyncio.ensure_future(sleeper("a", 0.3, 0.3)), asyncio.ensure_future(sleeper("b", 0.5))]
    await clock.advance(1.0)
    assert seen == [("a", 0.3), ("b", 0.5), ("a", 0.6)] and clock() == 1.0
    assert all(task.done() for task in tasks)
    with pytest.raises(ValueError):
        await clock.advance(-1)
