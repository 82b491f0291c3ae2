"""The turn pipeline with scripted services (no Ray, no models): ordering, interruption, errors.

The scripted services replay a timeline (a delay before each item), like LiveKit's fakes, so
the tests assert what the page would see, in order, without depending on model speed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import av
import numpy as np
import pytest

from media.track import PacingTrack
from parley.engine.session import Session
from tests.support.fake_services import Page, ScriptedServices, frames, make_session, pump, wait_until
from tests.support.speech import speak


async def answer_typed(session: Session, page: Page, track: PacingTrack, text: str) -> bool:
    """Type `text` and play the answer to its end (its metrics); returns what send_text said."""
    stop = asyncio.Event()
    pumping = asyncio.create_task(pump(track, stop))
    taken = await session.send_text(text)
    await wait_until(lambda: page.of("metrics"))
    stop.set()
    await pumping
    return taken


async def test_text_turn_streams_text_and_speaks_each_sentence_in_order() -> None:
    services = ScriptedServices(["Paris is ", "the capital. ", "It is in ", "France."])
    session, page, track = make_session(services)
    await answer_typed(session, page, track, "  What is the capital of France?  ")

    user, answer = page.of("message")[:2]
    assert user == {"id": user["id"], "role": "user", "text": "What is the capital of France?", "state": "done"}
    assert answer["role"] == "assistant" and answer["state"] == "streaming"
    assert "".join(d["text"] for d in page.of("delta")) == "Paris is the capital. It is in France."
    assert page.of("state")[-1] == {"id": answer["id"], "state": "done"}
    assert services.spoken == ["Paris is the capital.", "It is in France."]
    assert track.packets_sent >= 6
    metrics = page.of("metrics")[0]
    assert metrics["voice_to_voice"] is not None and metrics["llm_ttft"] is not None
    assert [m.role for m in services.requests[0]] == ["system", "user"]


async def test_interrupt_stops_text_and_speech_and_keeps_what_was_said() -> None:
    services = ScriptedServices(["One. ", "Two. ", "Three. ", "Four. ", "Five."], delta_delay=0.05)
    session, page, track = make_session(services)
    await session.send_text("Count to five.")
    await wait_until(lambda: len(page.of("delta")) >= 2)
    await session.interrupt()

    answer_id = page.of("message")[1]["id"]
    streamed = "".join(d["text"] for d in page.of("delta"))
    # nothing was played (no sender pulled the track): the user heard none of it
    assert page.of("state")[-1] == {"id": answer_id, "state": "interrupted", "text": "", "unspoken": streamed.strip()}
    assert services.closed_early, "the LLM stream was closed, not left running"
    assert track.queued_s == 0, "queued speech was dropped at once"
    assert session.history[-1].text == "" and session.history[-1].state == "interrupted"
    deltas = len(page.of("delta"))
    await asyncio.sleep(0.2)  # absence of more text takes waiting past the next scripted delta
    assert len(page.of("delta")) == deltas

    await session.send_text("And now?")
    await wait_until(lambda: len(services.requests) == 2)
    sent = [(m.role, m.text()) for m in services.requests[1]]
    assert sent[-2:] == [("user", "Count to five."), ("user", "And now?")], "an answer nobody heard is not history"
    await session.close()


async def test_silent_recording_gets_a_notice_and_never_reaches_the_models() -> None:
    services = ScriptedServices(["Hi."])
    session, page, _ = make_session(services)
    await session.talk_start()
    for _ in range(50):  # one second of digital silence from the microphone
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1920), np.int16), format="s16", layout="stereo")
        frame.sample_rate = 48000
        session.on_audio_frame(frame)
    await session.talk_end()
    await wait_until(lambda: page.of("notice"))
    assert "didn't hear any speech" in page.of("notice")[0]["text"]
    assert services.transcribed == 0 and not services.requests
    assert not page.of("message")


async def test_llm_failure_mid_answer_keeps_the_text_and_marks_error() -> None:
    services = ScriptedServices(["It is ", "sunny ", "and "], fail_after=2)
    session, page, _ = make_session(services)
    await session.send_text("Weather?")
    await wait_until(lambda: any(s["state"] == "error" for s in page.of("state")))
    error = next(s for s in page.of("state") if s["state"] == "error")
    assert error["error"] == "The language model is not answering right now; please try again."
    assert "backend went away" not in error["error"], "a backend's own words go to the log, not the page"
    assert session.history[-1].text == "It is sunny "
    await session.send_text("Still there?")  # the session goes on
    await wait_until(lambda: len(services.requests) == 2)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [("x" * 2001, "limited to 2000 characters"), (12, "not text")],
)
async def test_bad_text_is_refused_with_a_reason(payload: Any, expected: str) -> None:
    services = ScriptedServices(["Hi."])
    session, page, _ = make_session(services)
    await session.send_text(payload)
    assert expected in page.of("notice")[0]["text"]
    assert not services.requests


async def test_turn_rate_is_limited() -> None:
    services = ScriptedServices(["Ok."])
    session, page, track = make_session(services, turns_per_minute=2)
    stop = asyncio.Event()
    pumping = asyncio.create_task(pump(track, stop))
    for i in range(3):
        await session.send_text(f"message {i}")
        await wait_until(lambda: not session.busy)
    stop.set()
    await pumping
    assert "Too many turns" in page.of("notice")[-1]["text"]
    assert len(services.requests) == 2


async def test_only_the_newest_image_is_sent() -> None:
    services = ScriptedServices(["Ok."])
    session, _, _ = make_session(services, llm={"backend": "openai"}, prompt={"vision": True})
    frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24")
    session.on_video_frame(frame)
    await session.send_text("first")
    await wait_until(lambda: len(services.requests) == 1)
    await session.send_text("second")
    await wait_until(lambda: len(services.requests) == 2)
    with_images = [m.text() for m in services.requests[1] if m.has_image()]
    assert with_images == ["second"]
    session.set_vision(False)
    await session.send_text("third")
    await wait_until(lambda: len(services.requests) == 3)
    assert not any(m.has_image() for m in services.requests[2])
    await session.close()


async def test_a_recording_that_runs_too_long_ends_at_the_limit_and_still_gets_an_answer() -> None:
    services = ScriptedServices(["Ok."])
    session, page, _ = make_session(services, max_record_s=1.0)
    await session.talk_start()
    speech = speak("Tell me everything you know about the history of the Roman empire, please.", rate=48000)
    for frame in frames(speech[: 2 * 48000]):  # two seconds of speech, though the limit is one
        session.on_audio_frame(frame)
        await asyncio.sleep(0)
    # A pause inside the first second may start a speculative transcription (and an answer) too,
    # so the counters may jump past 1 between two polls: wait for what the user sees instead.
    await wait_until(lambda: any(s["state"] == "done" for s in page.of("state")))
    stopped = [r for r in page.of("recording") if not r["active"]]
    assert len(stopped) == 1 and "1-second limit" in stopped[0]["reason"]
    assert [m["role"] for m in page.of("message")] == ["user", "assistant"], "one turn, answered"
    assert services.transcribed >= 1 and services.requests
    await session.close()


async def test_keep_images_decides_how_many_past_frames_the_llm_sees() -> None:
    services = ScriptedServices(["Ok."])
    session, _, _ = make_session(services, llm={"backend": "openai"}, prompt={"keep_images": 2, "vision": True})
    session.on_video_frame(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90, np.uint8), format="rgb24"))
    for i, text in enumerate(["one", "two", "three"], start=1):
        await session.send_text(text)
        await wait_until(lambda i=i: len(services.requests) == i)
    assert [m.text() for m in services.requests[2] if m.has_image()] == ["two", "three"]
    await session.close()
    services = ScriptedServices(["Ok."])
    session, _, _ = make_session(services, prompt={"keep_images": 0, "vision": True})
    session.on_video_frame(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90, np.uint8), format="rgb24"))
    await session.send_text("four")
    await wait_until(lambda: len(services.requests) == 1)
    assert not any(m.has_image() for m in services.requests[0])
    await session.close()


async def test_a_stuck_model_costs_one_turn_within_the_turn_deadline() -> None:
    services = ScriptedServices(["It ", "is ", "sunny."], delta_delay=5.0)  # a model that stopped answering
    session, page, _ = make_session(services, turn_timeout_s=0.3)
    began = asyncio.get_running_loop().time()
    await session.send_text("Weather?")
    await wait_until(lambda: any(s["state"] == "error" for s in page.of("state")), timeout=3)
    error = next(s for s in page.of("state") if s["state"] == "error")
    assert "longer than 0.3 seconds" in error["error"]
    assert asyncio.get_running_loop().time() - began < 2.0
    assert services.closed_early, "its model call was cancelled"
    services.delta_delay = 0.0
    await session.send_text("Still there?")  # the session goes on
    await wait_until(lambda: [s for s in page.of("state") if s["state"] == "done"], timeout=3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("\ud800 hello", "not valid text"), ("🙂" * 1999, "too long for the language model")],
    ids=["lone-surrogate", "2000-emoji"],
)
async def test_poison_text_is_refused_and_the_next_turn_works(text: str, expected: str) -> None:
    services = ScriptedServices(["Ok."])
    session, page, _ = make_session(services)
    await session.send_text(text)
    assert expected in page.of("notice")[-1]["text"]
    assert not services.requests, "it never reached the model"
    await session.send_text("Hello?")
    await wait_until(lambda: len(services.requests) == 1)
    assert [m.text() for m in services.requests[0]][-1] == "Hello?"
    await session.close()


async def test_a_turn_the_model_could_not_answer_is_left_out_of_the_next_prompt() -> None:
    services = ScriptedServices(["x"], fail_after=0)  # fails before its first word
    session, page, _ = make_session(services)
    await session.send_text("poison")
    await wait_until(lambda: any(s["state"] == "error" for s in page.of("state")))
    services.fail_after = None
    await session.send_text("Hello?")
    await wait_until(lambda: len(services.requests) == 2)
    assert [m.text() for m in services.requests[1]][1:] == ["Hello?"]
    await session.close()


async def test_only_the_newest_images_are_kept_in_memory() -> None:
    services = ScriptedServices(["Ok."])
    session, _, _ = make_session(services, llm={"backend": "openai"}, prompt={"keep_images": 2, "vision": True})
    session.on_video_frame(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90, np.uint8), format="rgb24"))
    for i in range(6):
        await session.send_text(f"look {i}")
        await wait_until(lambda i=i: len(services.requests) == i + 1)
    assert sum(1 for e in session.history if e.image) == 2
    await session.close()


async def test_an_answer_with_code_is_shown_whole_and_spoken_without_markup_or_code() -> None:
    reply = ["Here is **the** fix:\n", "```python\n", "print('hi')\n", "```\n", "Run `python app.py` now."]
    services = ScriptedServices(reply)
    session, page, track = make_session(services)
    await answer_typed(session, page, track, "Fix it")
    assert "".join(d["text"] for d in page.of("delta")) == "".join(reply), "the page gets the Markdown as written"
    assert services.spoken == ["Here is the fix:", "Python code shown on screen.", "Run python app.py now."]
    assert not any(ch in "".join(services.spoken) for ch in "`*#")


async def test_each_sentence_is_announced_as_it_starts_playing_with_its_place_in_the_answer() -> None:
    reply = ["First **one**. ", "Then `code`.\n", "```sh\nls\n```\n", "Last."]
    services = ScriptedServices(reply)
    session, page, track = make_session(services)
    assert await answer_typed(session, page, track, "Go")
    text = "".join(reply)
    answer_id = page.of("message")[1]["id"]
    speaking = page.of("speaking")
    assert [s["sentence"] for s in speaking] == [0, 1, 2, 3, None]
    assert all(s["id"] == answer_id for s in speaking)
    spans = [text[s["start"] : s["end"]].strip() for s in speaking[:-1]]
    assert spans == ["First **one**.", "Then `code`.", "```sh\nls\n```", "Last."]
    assert services.spoken == ["First one.", "Then code.", "Shell code shown on screen.", "Last."]


async def test_a_new_conversation_forgets_the_history_the_llm_sees() -> None:
    services = ScriptedServices(["Noted."])
    session, page, track = make_session(services)
    assert await answer_typed(session, page, track, "Remember the word pineapple.")
    await session.start_over()
    assert session.history == []
    assert await session.send_text("What word?")
    await wait_until(lambda: len(services.requests) == 2)
    assert [(m.role, m.text()) for m in services.requests[1]][1:] == [("user", "What word?")]
    assert not await session.send_text("   "), "an empty message is refused"
    await session.close()
