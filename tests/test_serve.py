"""The deployments behind Serve handles, as the ingress calls them (local Ray, embedded models)."""

from __future__ import annotations

import pytest
from ray import serve

from media.packet import OpusPacket
from parley.engine.types import ChatMessage
from tests.support.speech import decode_opus, resample, speak

pytestmark = pytest.mark.serve


def handle(name: str):  # type: ignore[no-untyped-def]
    return serve.get_deployment_handle(name, app_name="parley")


async def test_asr_handle_transcribes_spoken_words(serve_app) -> None:
    transcript = await handle("ASR").transcribe.remote(speak("Please open the window.", rate=16000))
    text = transcript.text.lower()
    assert "open" in text and "window" in text, text


async def test_llm_handle_streams_a_reply(serve_app) -> None:
    messages = [ChatMessage(role="user", content="Name three colors.")]
    deltas = [d async for d in handle("LLM").options(stream=True).stream_reply.remote(messages)]
    assert len(deltas) > 1 and "".join(deltas).strip()


async def test_tts_handle_speech_decodes_and_transcribes_back(serve_app) -> None:
    sentence = "The quick brown fox jumps over the lazy dog."
    packets = [p async for p in handle("TTS").options(stream=True).synthesize.remote(sentence, None)]
    assert packets and all(isinstance(p, OpusPacket) and p.samples == 960 for p in packets)
    audio = resample(decode_opus(packets), 48000, 16000)
    assert abs(len(audio) / 16000 - len(packets) * 0.02) < 0.1
    heard = (await handle("ASR").transcribe.remote(audio)).text.lower()
    assert all(word in heard for word in ("quick", "brown", "fox")), heard


async def test_a_replica_error_reaches_the_session_as_its_own_message(serve_app, monkeypatch) -> None:
    """LLMError raised in a replica arrives through the handle as the deployment's words, not a Ray traceback."""
    from deployments.ingress import HandleServices
    from deployments.llm import LLM
    from parley.config import LLMConfig
    from parley.engine.services import ServiceError
    from tests.support.fake_openai import FakeOpenAI

    fake = await FakeOpenAI(fail=[401]).start()
    try:
        config = LLMConfig(backend="openai", base_url=fake.base_url, api_key_env="PARLEY_NO_SUCH_KEY", max_retries=0)
        app = serve.deployment(name="LLM", ray_actor_options={"num_cpus": 0})(LLM).bind(config)
        llm = serve.run(app, name="llm-errors", route_prefix=None)
        services = HandleServices(handle("ASR"), llm, handle("TTS"))
        with pytest.raises(ServiceError) as caught:
            async for _ in services.stream_reply([ChatMessage(role="user", content="Hi")]):
                pass
        assert str(caught.value).startswith("The language model endpoint refused the API key (HTTP 401)")
        assert "Traceback" not in str(caught.value) and "ray::" not in str(caught.value)
    finally:
        serve.delete("llm-errors")
        await fake.stop()
