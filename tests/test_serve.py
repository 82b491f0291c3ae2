"""The deployments behind Serve handles, as the ingress calls them (local Ray, embedded models)."""

from __future__ import annotations

import pytest
from ray import serve

from parley.types import ChatMessage, OpusPacket
from tests.speech import decode_opus, resample, speak

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
