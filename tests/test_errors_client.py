"""What a user sees when the LLM endpoint misbehaves, from the page's side of the socket.

The ingress runs in-process with the real deployments (LLM on the OpenAI backend pointed at a
loopback fake); the client is the same socket.io client the other tests use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from parley.config import ParleyConfig
from tests.support.client import ParleyClient
from tests.support.fake_openai import FakeOpenAI
from tests.support.ingress import local_ingress
from tests.support.network import free_port


@pytest.fixture
async def page(fake: FakeOpenAI) -> AsyncIterator[ParleyClient]:
    config = ParleyConfig.model_validate(
        {
            "server": {"port": free_port()},
            "llm": {"backend": "openai", "base_url": fake.base_url, "api_key_env": "PARLEY_TEST_KEY", "max_retries": 0},
        }
    )
    ingress = local_ingress(config)
    await ingress.start()
    client = ParleyClient(ingress.url)
    await client.connect(media=False)
    yield client
    await client.close()
    await ingress.stop()


async def finished(client: ParleyClient, count: int) -> list[dict]:
    return await client.wait_for(  # type: ignore[no-any-return]
        lambda: (
            (done := [m for m in client.messages("assistant") if m["state"] in ("done", "error")]) and len(done) >= count and done
        ),
        timeout=30,
    )


async def test_server_error_marks_the_answer_and_the_next_turn_works(page: ParleyClient, fake: FakeOpenAI) -> None:
    fake.fail = [503]
    await page.sio.emit("text", {"text": "Hello?"})
    failed = (await finished(page, 1))[0]
    assert failed["state"] == "error" and "HTTP 503" in failed["error"]
    await page.sio.emit("text", {"text": "Hello again?"})
    answered = (await finished(page, 2))[1]
    assert answered["state"] == "done" and answered["text"] == "".join(fake.reply)


async def test_a_stream_cut_half_way_keeps_the_text_already_shown(page: ParleyClient, fake: FakeOpenAI) -> None:
    fake.cut_after = 3
    await page.sio.emit("text", {"text": "Tell me something."})
    cut = (await finished(page, 1))[0]
    assert cut["state"] == "error" and "cut off" in cut["error"]
    assert cut["text"] == "".join(fake.reply[:3])


async def test_a_rejected_key_tells_the_user_what_to_fix(
    page: ParleyClient, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.fail = [401]
    await page.sio.emit("text", {"text": "Hi"})
    failed = (await finished(page, 1))[0]
    assert failed["state"] == "error" and "HTTP 401" in failed["error"]


async def test_speech_cut_mid_sentence_ends_its_audio_and_the_text_stays(fake: FakeOpenAI) -> None:
    config = ParleyConfig.model_validate(
        {
            "server": {"port": free_port()},
            "webrtc": {"ice_addresses": ["127.0.0.1"]},
            "llm": {"backend": "openai", "base_url": fake.base_url, "api_key_env": "PARLEY_TEST_KEY", "max_retries": 0},
            "tts": {"backend": "openai", "base_url": fake.base_url, "api_key_env": "PARLEY_TEST_KEY", "max_retries": 0},
        }
    )
    fake.cut_after = 2500  # speech bytes: the first sentence's Ogg stream dies part-way
    ingress = local_ingress(config)
    await ingress.start()
    client = ParleyClient(ingress.url)
    try:
        await client.connect()
        await client.sio.emit("text", {"text": "Say something."})
        notice = await client.wait_for(lambda: [n for n in client.of("notice") if "cut off" in n["text"]], timeout=30)
        assert notice[0]["level"] == "error"
        answer = (await finished(client, 1))[0]
        assert answer["state"] == "done" and answer["text"] == "".join(fake.reply)
        assert [body["input"] for body in fake.bodies("/v1/audio/speech")][:1] == ["Hello there!"]
        fake.cut_after = None
        await client.sio.emit("text", {"text": "Again?"})
        spoken = await client.wait_for(lambda: [m for m in client.of("metrics") if m["id"] != answer["id"]], timeout=30)
        assert spoken[0]["voice_to_voice"] is not None  # the next turn is spoken to the end
    finally:
        await client.close()
        await ingress.stop()


async def test_an_answer_cut_by_the_length_limit_is_marked_cut(page: ParleyClient, fake: FakeOpenAI) -> None:
    fake.finish_reason = "length"
    await page.sio.emit("text", {"text": "Tell me everything."})
    cut = (await finished(page, 1))[0]
    assert cut["state"] == "done" and cut["cut"] is True
    await page.wait_for(lambda: page.of("metrics"), timeout=30)  # spoken to its end: the next turn will not interrupt it
    fake.finish_reason = "stop"
    await page.sio.emit("text", {"text": "And briefly?"})
    whole = (await finished(page, 2))[1]
    assert whole["state"] == "done" and whole["cut"] is False


async def test_typed_messages_are_acknowledged_and_a_new_conversation_is_forgotten(page: ParleyClient, fake: FakeOpenAI) -> None:
    assert await page.sio.call("text", {"text": "Remember the word pineapple."}, timeout=10) == {"ok": True}
    await finished(page, 1)
    await page.wait_for(lambda: page.of("metrics"), timeout=30)  # spoken to the end, not interrupted
    assert await page.sio.call("text", {"text": "x" * 5000}, timeout=10) == {"ok": False}, "refused: the page keeps it"
    assert await page.sio.call("new_conversation", {}, timeout=10) == {"ok": True}
    assert await page.sio.call("text", {"text": "What word?"}, timeout=10) == {"ok": True}
    await finished(page, 2)
    sent = fake.bodies("/v1/chat/completions")[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"] and sent[-1]["content"] == "What word?"
    again = ParleyClient(page.url, session_id=page.session_id, session_key=page.session_key)
    try:
        welcome = await again.connect(media=False)
        assert [m["text"] for m in welcome["history"]] == ["What word?", "".join(fake.reply)]
    finally:
        await again.close()
