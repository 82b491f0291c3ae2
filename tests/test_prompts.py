"""What the model is asked, turn by turn, with a scripted model that records every prompt (no Ray, no
models but the VAD): the user's words reach it in every kind of turn, a scene note goes only with a
question about the picture, and an answer that copies or loops is caught before it locks the
conversation in.
"""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest

from parley.engine.session import Session
from tests.support.fake_services import Page, ScriptedServices, frames, make_session, playing, wait_until
from tests.support.speech import speak, trim

QUESTION = "What is the capital of France?"
STUCK = "I'm sorry, I'm not sure what to suggest. Can you please tell me what you're looking for?"


def camera(session: Session) -> None:
    session.on_video_frame(av.VideoFrame.from_ndarray(np.full((120, 160, 3), 90, np.uint8), format="rgb24"))


async def ask(session: Session, page: Page, services: ScriptedServices, how: str, question: str = QUESTION) -> None:
    """One turn, typed, by push-to-talk or hands-free, answered to its end."""
    answered = len(page.of("metrics")) + sum(1 for s in page.of("state") if s["state"] == "error")
    services.transcript = question
    if how == "typed":
        assert await session.send_text(question)
    else:
        words = trim(speak(question, rate=48000))
        quiet = np.zeros(int(0.4 * 48000), np.float32)
        if how == "push-to-talk":
            await session.talk_start()
        for frame in frames(np.concatenate([quiet, words, quiet, quiet, quiet])):
            session.on_audio_frame(frame)
            await asyncio.sleep(0.002)
        if how == "push-to-talk":
            await session.talk_end()
    await wait_until(
        lambda: len(page.of("metrics")) + sum(1 for s in page.of("state") if s["state"] == "error") > answered, timeout=10
    )


@pytest.mark.parametrize("read_ahead", [True, False], ids=["read-ahead", "no-read-ahead"])
@pytest.mark.parametrize("how", ["typed", "push-to-talk", "hands-free"])
async def test_the_users_words_reach_the_model_in_every_kind_of_turn(how: str, read_ahead: bool) -> None:
    services = ScriptedServices(["The Seine runs through Paris."])
    services.then = [["Paris is the capital of France."]]
    session, page, track = make_session(
        services,
        vision={"enabled": True},
        prompt={"read_ahead": read_ahead},
        turn={"hands_free": how == "hands-free", "end_of_turn": {"judge": "silence", "silence_s": 0.6}},
    )
    camera(session)
    async with playing(track):
        for question in (QUESTION, "And which river runs through it?"):
            await ask(session, page, services, how, question)
            asked = services.requests[-1]
            assert asked[-1].role == "user" and asked[-1].text() == question, "the words, whole, and no note with them"
            assert asked[0].role == "system"
    assert [m.text() for m in services.requests[-1]][-3:-1] == [QUESTION, "Paris is the capital of France."]
    if read_ahead:
        assert services.read_ahead_prompts, "the model read the prompt's start ahead"
        if how != "typed":  # a typed turn's words come with it: only the spoken ones are read ahead of
            assert all(QUESTION not in m.text() for m in services.read_ahead_prompts[0]), (
                "only the start: the words were not said yet"
            )
        await wait_until(lambda: services.read_ahead_prompts[-1][-2].text() == "The Seine runs through Paris.")
        assert services.read_ahead_prompts[-1][-1].text() == "", (
            "once an answer is written, the next turn's start, answer and all"
        )
    elif not read_ahead:
        assert not services.read_ahead_prompts
    await session.close()


async def test_a_scene_note_goes_only_with_a_question_about_the_picture() -> None:
    services = ScriptedServices(["Ok."])
    services.scene = 'the words "0:00:52:100 1111"'
    session, page, track = make_session(services, vision={"enabled": True})
    camera(session)
    async with playing(track):
        await ask(session, page, services, "typed", "Please tell me which ocean is the biggest one.")
        assert services.requests[-1][-1].text() == "Please tell me which ocean is the biggest one."
        await ask(session, page, services, "typed", "What do you see on my camera?")
        note = '[Camera note: I see the words "0:00:52:100 1111".]\nWhat do you see on my camera?'
        assert services.requests[-1][-1].text() == note
        session.set_vision(False)
        await ask(session, page, services, "typed", "How many legs does a spider have?")
        assert services.requests[-1][-1].text() == "How many legs does a spider have?", "no 'I cannot see' line either"
        await ask(session, page, services, "typed", "What am I holding?")
        assert "I cannot see anything" in services.requests[-1][-1].text()
    await session.close()
    services = ScriptedServices(["Ok."])
    session, page, track = make_session(services, vision={"enabled": True}, prompt={"scene_note": "always"})
    camera(session)
    async with playing(track):
        await ask(session, page, services, "typed", "Why is the sky blue?")
    assert services.requests[-1][-1].text().startswith("[Camera note: I see a dog, a bicycle.]")
    await session.close()


async def test_a_non_answer_is_not_read_again_by_the_model() -> None:
    services = ScriptedServices(["Ok."])
    services.then = [[STUCK], ["Paris is the capital of France."]]
    session, page, track = make_session(services)
    async with playing(track):
        await ask(session, page, services, "typed", "Hmm blorf the crondle?")
        await ask(session, page, services, "typed", QUESTION)
        await ask(session, page, services, "typed", "And of Italy?")
    texts = [m.text() for m in services.requests[-1]]
    assert texts[1:] == [QUESTION, "Paris is the capital of France.", "And of Italy?"], "the mumble and its non-answer are gone"
    assert [e.text for e in session.history][:2] == ["Hmm blorf the crondle?", STUCK], "the page keeps them"
    await session.close()


async def test_an_answer_that_begins_as_an_earlier_one_is_asked_for_again_without_it() -> None:
    first = "The Pacific Ocean is the biggest ocean on Earth by far."
    services = ScriptedServices(["Ok."])
    services.then = [[first], [first], ["A spider ", "has eight legs."]]
    session, page, track = make_session(services)
    async with playing(track):
        await ask(session, page, services, "typed", "Which ocean is the biggest?")
        await ask(session, page, services, "typed", "How many legs does a spider have?")
    assert len(services.requests) == 3, "the copy was asked for again"
    retry = [m.text() for m in services.requests[2]]
    assert first not in retry and "Which ocean is the biggest?" not in retry, "without the exchange it copied"
    answer = page.of("message")[-1]["id"]
    shown = "".join(d["text"] for d in page.of("delta") if d["id"] == answer)
    assert shown == "A spider has eight legs.", "nothing of the copy was shown"
    assert services.spoken[-1] == "A spider has eight legs." and first not in services.spoken[1:]
    services.then = [[first], [first]]
    async with playing(track):
        await ask(session, page, services, "typed", "What do bees make?")
    last = [(m.role, m.text()) for m in services.requests[-1]]
    assert [r for r, _ in last] == ["system", "user"] and last[-1][1] == "What do bees make?", "at last, no history"
    assert page.of("state")[-1]["state"] == "done" and session.history[-1].text == "Ok."
    async with playing(track):
        await ask(session, page, services, "typed", "Which ocean is the biggest?")
    assert services.requests[-1][-1].text() == "Which ocean is the biggest?"
    assert session.history[-1].text == "Ok.", "the same question again may get the same answer (it is no copy)"
    await session.close()


async def test_a_sentence_from_an_earlier_answer_is_never_shown_or_spoken_again() -> None:
    tail = "It's a magical moment, and it brings joy to people everywhere."
    services = ScriptedServices(["Ok."])
    services.then = [
        ["The sky is new. ", tail],
        ["The ocean ", "is the biggest. ", "It's a magical moment, ", "and it brings joy ", "to people everywhere. ", "Truly."],
    ]
    session, page, track = make_session(services)
    async with playing(track):
        await ask(session, page, services, "typed", "Why is the sky new?")
        await ask(session, page, services, "typed", "Which ocean is the biggest?")
    answer = page.of("message")[-1]["id"]
    assert "".join(d["text"] for d in page.of("delta") if d["id"] == answer) == "The ocean is the biggest. "
    assert services.spoken[-1] == "The ocean is the biggest." and services.spoken.count(tail) == 1
    assert page.of("state")[-1] == {"id": answer, "state": "done"}, "it just ends: nothing wrong was shown"
    assert session.history[-1].text.strip() == "The ocean is the biggest."
    await session.close()


async def test_the_same_question_asked_again_may_get_the_same_answer() -> None:
    services = ScriptedServices(["Paris is the capital of France."])
    session, page, track = make_session(services)
    async with playing(track):
        await ask(session, page, services, "typed", QUESTION)
        await ask(session, page, services, "typed", "what is the capital of france")
    assert len(services.requests) == 2, "asked once each: no retry"
    assert [e.text for e in session.history if e.role == "assistant"] == ["Paris is the capital of France."] * 2
    await session.close()


async def test_a_reply_that_loops_is_stopped_and_kept_up_to_the_loop() -> None:
    services = ScriptedServices(['The time is "1:03:59:900 4798', *([":10"] * 40), '."'])
    session, page, track = make_session(services)
    async with playing(track):
        await ask(session, page, services, "typed", "What time is it?")
    done = page.of("state")[-1]
    assert done["state"] == "done" and "repeating itself" in done["stopped"], done
    assert done["text"] == session.history[-1].text and ":10:10:10:10" not in done["text"], done
    assert services.closed_early, "the model was stopped, not left to run to its length limit"
    await session.close()


async def test_past_the_history_limit_the_prompt_keeps_its_start_for_several_turns() -> None:
    services = ScriptedServices(["Ok."])
    services.then = [
        [answer]
        for answer in (
            "Paris is the capital of France.",
            "A spider has eight legs.",
            "Bees make honey from nectar.",
            "The Pacific Ocean is the biggest one.",
            "Water turns into ice when it freezes.",
            "Shakespeare wrote Romeo and Juliet.",
            "An hour has sixty minutes.",
            "Ripe bananas are yellow.",
            "A week has seven days.",
        )
    ]
    session, page, track = make_session(services, prompt={"history_messages": 8})
    async with playing(track):
        for i in range(9):
            await ask(session, page, services, "typed", f"Question {i + 1}?")
    starts = [request[1].text() for request in services.requests]
    assert starts == ["Question 1?"] * 4 + ["Question 3?"] * 2 + ["Question 5?"] * 2 + ["Question 7?"], starts
    assert all(len(r) - 1 <= 8 for r in services.requests), "never more than the limit"
    await session.close()
