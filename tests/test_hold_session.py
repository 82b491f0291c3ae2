"""Speech over an answer, end to end through a real `Session` on one `SteppedClock` (the session's
and its pacing track's): a backchannel held and resumed from its sentence, "wait, stop"
interrupting and becoming the next turn, its own voice playing on, and speech again right after
a play-on keeping the answer held. The hold's rule and timers alone: tests/test_hold.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ParamSpec

import numpy as np
import pytest

from media.track import PacingTrack
from parley.config import ParleyConfig
from parley.engine.events import PauseHeard, SpeechResumed
from parley.engine.ports import SentenceTag
from parley.engine.session import Session
from parley.policy import session_settings
from tests.support.clock import SteppedClock
from tests.support.fake_services import Page, ScriptedServices, frames
from tests.support.speech import speak, trim

P = ParamSpec("P")

STORY = "On day two the dragon baked bread for the king."


TALE = [
    "On day two the dragon baked bread for the king. ",
    "Then a knight rode up the mountain to taste it. ",
    "The queen sang about the sea all evening. ",
    "At night the stars came out over the castle. ",
]


def story(sentences: int) -> list[str]:
    """An answer of `sentences` sentences (as the model streams them), the first as `STORY` says."""
    assert TALE[0].strip() == STORY
    return TALE[:sentences]


def hands_free(services: ScriptedServices, clock: SteppedClock) -> tuple[Session, Page, PacingTrack]:
    """A hands-free session (as `make_session` builds one) whose timers and track both run on `clock`:
    what the answer played is on the session's time line, so its own words can come back."""
    sections = {"llm": {"backend": "openai"}, "prompt": {"vision": False}, "turn": {"hands_free": True}}
    session = Session("h" * 12, session_settings(ParleyConfig.model_validate(sections)), services, clock=clock)
    page = Page()
    session.attach(page)
    track = PacingTrack(clock=clock, sleep=clock.sleep)
    session.connect_output(track)
    return session, page, track


@contextlib.asynccontextmanager
async def pumping(track: PacingTrack) -> AsyncIterator[None]:
    """The track pulled as aiortc's sender would, at the pace of its clock (a `SteppedClock`: as the test moves it)."""

    async def pump() -> None:
        while True:
            await track.recv()

    task = asyncio.ensure_future(pump())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bounded(test: Callable[P, Awaitable[None]]) -> Callable[P, Awaitable[None]]:
    """A session test that cannot hang: at most 10 s of real time (a wait parked on the stepped clock fails it)."""

    @functools.wraps(test)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        async with asyncio.timeout(10):
            await test(*args, **kwargs)

    return run


async def run_until(clock: SteppedClock, done: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Move the clock 20 ms at a time until `done()` (at most `limit_s` of its time)."""
    deadline = clock() + limit_s
    while not done():
        assert clock() < deadline, f"not within {limit_s} s"
        await clock.advance(0.02)


async def talk_over(session: Session, clock: SteppedClock, said: str, after_s: float = 1.0) -> None:
    """`said` in hibari's voice, then silence, into the microphone at the clock's pace (a 20 ms frame per 20 ms)."""
    words = trim(speak(said, rate=48000))
    for frame in frames(np.concatenate([words, np.zeros(int(after_s * 48000), np.float32)])):
        session.on_audio_frame(frame)
        await clock.advance(0.02)


def states(page: Page, answer: str) -> list[str]:
    return [s["state"] for s in page.of("state") if s["id"] == answer]


def user_messages(page: Page) -> list[str]:
    return [m["text"] for m in page.of("message") if m["role"] == "user"]


class Resumes:
    """The track's `resume` calls (their `rewind`)."""

    def __init__(self, track: PacingTrack, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rewinds: list[bool] = []
        resume = track.resume

        def spy(*, rewind: bool = True) -> None:
            self.rewinds.append(rewind)
            resume(rewind=rewind)

        monkeypatch.setattr(track, "resume", spy)


async def answering(session: Session, page: Page, clock: SteppedClock, track: PacingTrack, seconds: float) -> tuple[str, str]:
    """A typed question, and its answer queued (`seconds` of audio): (the answer's id, its reply's id)."""
    assert await session.send_text("Tell me a story.")
    await run_until(clock, lambda: track.queued_s >= seconds - 1e-9 and session.answering is not None)
    turn = session.answering
    assert turn is not None and turn.reply is not None and turn.delivery is not None
    return turn.delivery.entry.id, turn.reply.id


@bounded
async def test_a_backchannel_over_the_answer_holds_it_then_resumes_it_from_its_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SteppedClock()
    services = ScriptedServices(story(3), transcript="Tell me a story.")
    services.packets = 50  # 1 s a sentence
    session, page, track = hands_free(services, clock)
    resumes = Resumes(track, monkeypatch)
    answer, reply = await answering(session, page, clock, track, 3.0)
    async with pumping(track):  # 0.2 s of its first sentence leaves
        await run_until(clock, lambda: track.played(SentenceTag(reply, 0)).samples >= 10 * 960)
    assert track.played(SentenceTag(reply, 0)).samples == 10 * 960 and track.queued_s == pytest.approx(2.8)
    before = len(states(page, answer))
    services.transcript = "Mm-hmm."
    await talk_over(session, clock, "Mm-hmm.")  # nothing pulls the track meanwhile
    await run_until(
        clock, lambda: session.answering is not None and session.answering.hold is not None and session.answering.hold.settled
    )
    held = states(page, answer)[before:]
    assert held[0] == "paused" and held[-1] == "done", held  # the answer's own state again ("done": its text is all out)
    assert resumes.rewinds == [True], "resumed from its sentence's start"
    assert track.queued_s == pytest.approx(3.0) and track.played(SentenceTag(reply, 0)).samples == 0
    assert not track._held
    async with pumping(track):
        await run_until(clock, lambda: session.answering is None)
    assert "interrupted" not in states(page, answer) and states(page, answer)[-1] == "done"
    assert track.queued_s == 0 and track.played(SentenceTag(reply, 2)).samples == 50 * 960, "played to its end"
    assert user_messages(page) == ["Tell me a story."] and len(services.requests) == 1, "the mm-hmm was no turn"
    await session.close()


@bounded
async def test_wait_stop_over_the_answer_interrupts_it_and_is_the_next_turn() -> None:
    clock = SteppedClock()
    services = ScriptedServices(story(3), transcript="Tell me a story.")
    services.packets = 50
    session, page, track = hands_free(services, clock)
    answer, _ = await answering(session, page, clock, track, 3.0)
    services.transcript = "Wait, stop."
    services.then = [["All right."]]
    async with pumping(track):
        await talk_over(session, clock, "Wait, stop.")
        await run_until(clock, lambda: len(user_messages(page)) == 2)
    assert "paused" in states(page, answer) and states(page, answer)[-1] == "interrupted", states(page, answer)
    assert user_messages(page) == ["Tell me a story.", "Wait, stop."]
    assert [m.text() for m in services.requests[-1] if m.role == "user"][-1] == "Wait, stop."
    await session.close()


@bounded
async def test_its_own_voice_coming_back_lets_the_answer_play_on(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SteppedClock()
    services = ScriptedServices(story(4), transcript="Tell me a story.")
    services.packets = 50
    session, page, track = hands_free(services, clock)
    resumes = Resumes(track, monkeypatch)
    answer, reply = await answering(session, page, clock, track, 4.0)
    async with pumping(track):
        await run_until(clock, lambda: track.played(SentenceTag(reply, 0)).samples >= 25 * 960)  # half a sentence heard
        turn = session.answering
        assert turn is not None and turn.reply is not None and "the dragon baked bread" in turn.reply.spoken_since(clock() - 3)
        services.transcript = "the dragon baked bread"
        before = len(states(page, answer))
        await talk_over(session, clock, "Yeah.")
        await run_until(clock, lambda: turn.hold is not None and turn.hold.settled)
        assert states(page, answer)[before:][0] == "paused"
        assert states(page, answer)[-1] == "done"
        await run_until(clock, lambda: session.answering is None)
    assert "interrupted" not in states(page, answer)
    assert resumes.rewinds == [False], "played on from where it stopped, at the pause; the end found it playing"
    assert not track._held
    assert user_messages(page) == ["Tell me a story."] and len(services.requests) == 1
    await session.close()


@bounded
async def test_speech_again_right_after_a_play_on_keeps_the_answer_held_and_it_plays_once_resumed() -> None:
    """The pause's words are its own voice (play_on) and the user goes on speaking: both events are
    posted before the coordinator handles the first (the transcript came back as speech resumed).
    Handling `PauseHeard` reports `Settled(play_on)` behind the queued `SpeechResumed`, which holds
    the answer again (`rehold`). The stale `play_on` once was applied anyway, leaving the hold "not
    held" while the track was held: the `resume` at the utterance's end then skipped the output, and
    the answer stayed silent for good while the page showed it "done". Now the output is held at
    once with the rehold, and a `play_on` that finds the hold held again is dropped."""
    clock = SteppedClock()
    services = ScriptedServices(story(4), transcript="Tell me a story.")
    services.packets = 50
    session, page, track = hands_free(services, clock)
    answer, reply = await answering(session, page, clock, track, 4.0)
    async with pumping(track):
        await run_until(clock, lambda: track.played(SentenceTag(reply, 0)).samples >= 25 * 960)
        services.transcript = "Mm-hmm."  # the pause's own transcript waits
        await talk_over(session, clock, "Yeah.", after_s=0.2)
        turn, hearing = session.answering, session.hearing
        assert turn is not None and turn.hold is not None and hearing is not None and hearing.speculation is not None
        hold, until = turn.hold, hearing.speculation.until
        assert hold.held and track._held and not hold.settled
        session.turns.post(PauseHeard(hearing, until, "the dragon baked bread"))  # its own voice: play on
        session.turns.post(SpeechResumed(until + 3200, thought=False))  # and the user speaks again
        await clock.advance(0)
        speaking_again = f"while speech went on again the hold said held={hold.held}, the track held={track._held}"
        for frame in frames(np.zeros(48000, np.float32)):  # the utterance ends: "Mm-hmm.", no turn
            session.on_audio_frame(frame)
            await clock.advance(0.02)
        assert hold.settled
        for _ in range(500):  # 10 s: the answer plays to its end
            if session.answering is None:
                break
            await clock.advance(0.02)
        assert session.answering is None, f"still {track.queued_s:.1f} s queued, track held={track._held}; {speaking_again}"
    assert "interrupted" not in states(page, answer)
    await session.close()
