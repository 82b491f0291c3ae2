"""The LLM deployment against an OpenAI-compatible endpoint (a loopback fake speaking the real protocol)."""

from __future__ import annotations

import asyncio

import pytest

from deployments.llm import LLM, LLMError
from parley.config import LLMConfig
from parley.engine.settings import PromptSettings
from parley.engine.types import ChatMessage, Finish, ImagePart, ImageURL, TextPart
from tests.support.fake_openai import API_KEY, FakeOpenAI
from tests.support.network import free_port

QUESTION = [ChatMessage(role="user", content="What is the capital of France?")]


def llm_for(fake: FakeOpenAI, prompt: dict[str, object] | None = None, **overrides: object) -> LLM:
    return LLM(
        LLMConfig.model_validate(
            {"backend": "openai", "base_url": fake.base_url, "api_key_env": "PARLEY_TEST_KEY", "model": "vision-1", **overrides}
        ),
        PromptSettings.model_validate(prompt or {}),
    )


async def reply(llm: LLM, messages: list[ChatMessage] = QUESTION) -> list[str]:
    return [d async for d in llm.stream_reply(messages)]


@pytest.mark.parametrize("reason", ["stop", "length"])
async def test_asked_for_it_the_stream_ends_with_why_the_model_stopped(fake: FakeOpenAI, reason: str) -> None:
    fake.finish_reason = reason
    items = [d async for d in llm_for(fake).stream_reply(QUESTION, finish=True)]
    assert items == [*fake.reply, Finish(reason=reason)]
    assert isinstance(items[-1], Finish) and items[-1].cut == (reason == "length")
    assert await reply(llm_for(fake)) == fake.reply, "without asking, only text"


async def test_streams_deltas_and_sends_model_settings_image_and_key(fake: FakeOpenAI) -> None:
    llm = llm_for(fake, {"image_detail": "high"}, temperature=0.2, max_tokens=77)
    image = ImagePart(image_url=ImageURL(url="data:image/jpeg;base64,AAAA"))
    question = ChatMessage(role="user", content=[TextPart(text="What do you see?"), image])
    assert (
        await reply(llm, [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello!"), question])
        == fake.reply
    )
    _, body, headers = fake.requests[0]
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert (body["model"], body["stream"], body["temperature"], body["max_tokens"]) == ("vision-1", True, 0.2, 77)
    assert body["messages"][0] == {"role": "system", "content": llm.prompt.system_prompt}
    assert body["messages"][1:3] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert body["messages"][3]["content"] == [
        {"type": "text", "text": "What do you see?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA", "detail": "high"}},
    ]


async def test_a_text_only_model_gets_the_text_alone(fake: FakeOpenAI) -> None:
    image = ImagePart(image_url=ImageURL(url="data:image/jpeg;base64,AAAA"))
    await reply(llm_for(fake, {"vision": False}), [ChatMessage(role="user", content=[TextPart(text="Look."), image])])
    assert fake.bodies("/v1/chat/completions")[0]["messages"][1] == {"role": "user", "content": "Look."}


async def test_closing_the_reply_closes_the_http_stream(fake: FakeOpenAI) -> None:
    fake.reply, fake.delta_delay_s = [f"word{i} " for i in range(200)], 0.01
    stream = llm_for(fake).stream_reply(QUESTION)
    assert await anext(stream) == "word0 "
    await stream.aclose()
    await asyncio.wait_for(fake.disconnected.wait(), 5.0)
    assert fake.deltas_sent < 100


async def test_wrong_key_says_which_variable_to_fix(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_TEST_KEY", "sk-wrong")
    with pytest.raises(LLMError, match=r"refused the API key \(HTTP 401\)\. Set \$PARLEY_TEST_KEY"):
        await reply(llm_for(fake))
    assert len(fake.requests) == 1, "a bad key is not retried"


async def test_rate_limits_and_server_errors_are_retried_then_succeed(fake: FakeOpenAI) -> None:
    fake.fail = [429, 503]
    assert await reply(llm_for(fake, max_retries=2)) == fake.reply
    assert len(fake.requests) == 3


async def test_retries_are_bounded_and_the_message_says_so(fake: FakeOpenAI) -> None:
    fake.fail = [500, 500, 500]
    with pytest.raises(LLMError, match=r"failed \(HTTP 500\) after 1 retries"):
        await reply(llm_for(fake, max_retries=1))
    assert len(fake.requests) == 2
    fake.fail = [429]
    with pytest.raises(LLMError, match=r"rate limited \(HTTP 429\)"):
        await reply(llm_for(fake, max_retries=0))


async def test_unreachable_endpoint_names_the_address_in_the_log_only(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    llm = LLM(LLMConfig(backend="openai", base_url=url, max_retries=0, timeout_s=5))
    with pytest.raises(LLMError, match=r"^Could not reach the language model\. Try again in a moment\.$"):
        await reply(llm)
    assert url in caplog.text, "the operator learns where it looked; the page does not (an internal address)"


async def test_a_stream_cut_half_way_keeps_what_was_said(fake: FakeOpenAI) -> None:
    fake.cut_after = 2
    got: list[str] = []
    with pytest.raises(LLMError, match="cut off"):
        async for delta in llm_for(fake).stream_reply(QUESTION):
            got.append(delta)
    assert got == fake.reply[:2]
