"""Hands-free turns, barge-in and echo, from an aiortc client, against the real app and models.

The client's microphone speaks hibari's voice in real time; with `echo_gain` it also picks up
what the client hears, as a loudspeaker next to a microphone would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tests.support.client import ParleyClient
from tests.support.speech import speak, split_at, trim

pytestmark = pytest.mark.serve

STORY = "Tell me a long story about a dragon who learns to bake bread, with many details."


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return trim(speak("What is the capital of France?", rate=48000))


@pytest.fixture
async def client(serve_app) -> AsyncIterator[ParleyClient]:
    client = ParleyClient(serve_app.url, hands_free=True)
    await client.connect()
    yield client
    await client.close()


def answers(client: ParleyClient, *states: str) -> list[dict]:
    return [m for m in client.messages("assistant") if not states or m["state"] in states]


async def speaking(client: ParleyClient, since: float) -> None:
    """Wait until the client hears the answer's voice."""
    await client.wait_for(lambda: client.heard.first_sound_after(since), timeout=60)


async def test_a_hands_free_turn_needs_no_key(client: ParleyClient, question: np.ndarray) -> None:
    await asyncio.sleep(0.3)
    ended = await client.say(question)
    user = await client.wait_for(lambda: client.messages("user"), timeout=30)
    assert "capital" in user[0]["text"].lower() and "france" in user[0]["text"].lower(), user
    assert not client.of("recording"), "no key, no recording events"
    await client.wait_for(lambda: answers(client, "done"), timeout=60)
    await speaking(client, ended)
    states = [t["state"] for t in client.of("turn")]
    assert "hearing" in states and "thinking" in states and "speaking" in states, states


async def test_talking_over_the_answer_interrupts_it_and_becomes_the_next_turn(
    client: ParleyClient, question: np.ndarray
) -> None:
    began = time.monotonic()
    await client.sio.emit("text", {"text": STORY})
    await speaking(client, began)
    await asyncio.sleep(0.5)
    await client.say(question)
    cut = await client.wait_for(lambda: answers(client, "interrupted"), timeout=20)
    story = cut[0]
    assert story["text"].strip() or story.get("unspoken"), story
    full = "".join(d["text"] for d in client.of("delta") if d["id"] == story["id"])
    assert len(story["text"]) < len(full), "only the words heard stay as the answer's text"
    users = await client.wait_for(lambda: len(client.messages("user")) >= 2 and client.messages("user"), timeout=30)
    assert "capital" in users[1]["text"].lower(), users
    await client.wait_for(lambda: [m for m in answers(client, "done") if m["id"] != story["id"]], timeout=60)


async def test_its_own_voice_coming_back_at_minus_6_db_never_interrupts_it(client: ParleyClient, question: np.ndarray) -> None:
    client.mic.echo_gain = 0.5  # -6 dB: a speakerphone with no echo cancelling of its own
    await client.sio.emit("text", {"text": STORY})
    await client.wait_for(lambda: client.of("metrics"), timeout=120)  # spoken to its very end
    assert answers(client, "done") and not answers(client, "interrupted")
    assert len(client.messages("user")) == 1, "its own voice never became a user turn"
    # and the user, at a normal level over the same echo, still can interrupt
    began = time.monotonic()
    await client.sio.emit("text", {"text": STORY})
    await speaking(client, began)
    await asyncio.sleep(0.5)
    await client.say(question)
    await client.wait_for(lambda: answers(client, "interrupted"), timeout=20)


async def test_backchannels_leave_the_answer_playing_and_are_no_turn(client: ParleyClient) -> None:
    """ "Yeah." and "Right." said while it tells a story: it may pause for them, but it goes on,
    and the story ends done, its text once, with one user message in the chat."""
    began = time.monotonic()
    await client.sio.emit("text", {"text": STORY})
    await speaking(client, began)
    for word in ("Yeah.", "Right."):
        await asyncio.sleep(1.5)
        if answers(client, "done") and client.of("metrics"):
            break  # the story was short: nothing left to speak over
        await client.say(trim(speak(word, rate=48000)))
    await client.wait_for(lambda: client.of("metrics"), timeout=120)  # spoken to its very end
    await asyncio.sleep(1.0)  # a turn made of a backchannel would have come by now
    assert not answers(client, "interrupted"), answers(client)
    assert len(client.messages("user")) == 1, client.messages("user")
    story = answers(client, "done")[0]
    full = "".join(d["text"] for d in client.of("delta") if d["id"] == story["id"])
    assert " ".join(story["text"].split()) == " ".join(full.split()), "a resumed sentence is in the answer once"


async def test_a_cough_is_not_a_turn(client: ParleyClient) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(int(0.15 * 48000)) / 48000
    cough = (0.6 * rng.standard_normal(t.size) * np.exp(-t * 25)).astype(np.float32)
    await client.say(np.concatenate([cough, np.zeros(9600, np.float32), cough]))
    await asyncio.sleep(2.5)  # longer than the longest end-of-turn silence (max_silence_s, 2 s): no turn may come of it
    assert not client.messages("user") and not client.messages("assistant") and not client.of("notice")


async def test_after_an_interruption_the_llm_is_told_only_the_words_that_were_heard(fake) -> None:
    from parley.config import ParleyConfig
    from tests.support.ingress import local_ingress
    from tests.support.network import free_port

    fake.reply = [
        "Dragons love warm ovens. ",
        "They knead dough with their claws, slowly and with care. ",
        "Then they breathe a gentle flame to bake the loaves golden brown. ",
        "Finally they share the bread with every village nearby.",
    ]
    config = ParleyConfig.model_validate(
        {
            "server": {"port": free_port()},
            "webrtc": {"ice_addresses": ["127.0.0.1"]},
            "llm": {"backend": "openai", "base_url": fake.base_url, "api_key_env": "PARLEY_TEST_KEY", "max_retries": 0},
        }
    )
    ingress = local_ingress(config)
    await ingress.start()
    client = ParleyClient(ingress.url)
    try:
        await client.connect()
        began = time.monotonic()
        await client.sio.emit("text", {"text": STORY})
        await speaking(client, began)
        await asyncio.sleep(2.5)  # the first sentence (about 1.3 s) and a bit of the second are heard
        await client.sio.emit("stop", {})
        story = (await client.wait_for(lambda: answers(client, "interrupted"), timeout=10))[0]
        full = " ".join("".join(fake.reply).split())
        heard, unspoken = story["text"], story["unspoken"]
        assert heard and unspoken and f"{heard} {unspoken}" == full, story
        assert heard.startswith("Dragons love warm ovens. They knead"), heard

        await client.sio.emit("text", {"text": "And then?"})
        await client.wait_for(lambda: len(fake.bodies("/v1/chat/completions")) == 2, timeout=10)
        sent = [(m["role"], m["content"]) for m in fake.bodies("/v1/chat/completions")[1]["messages"]]
        assert sent[-3:] == [("user", STORY), ("assistant", heard), ("user", "And then?")]
    finally:
        await client.close()
        await ingress.stop()


async def test_a_thinking_pause_in_the_middle_of_a_question_does_not_end_the_turn(client: ParleyClient) -> None:
    """ "Please tell me which ocean is ... the biggest one.", with a 1 s pause where the sentence
    plainly goes on: one user message, not a turn cut off at the pause (the silence rule's 0.6 s
    did that) and another made of the rest."""
    full, cut = split_at("Please tell me which ocean is", "the biggest one.")
    await asyncio.sleep(0.3)
    await client.say(np.concatenate([full[:cut], np.zeros(48000, np.float32), full[cut:]]))
    user = await client.wait_for(lambda: client.messages("user"), timeout=30)
    await client.wait_for(lambda: answers(client, "done"), timeout=60)
    await asyncio.sleep(1.0)  # a second turn made of the rest would have come by now
    users = client.messages("user")
    assert len(users) == 1, users
    assert "ocean" in user[0]["text"].lower() and "biggest" in user[0]["text"].lower(), user
