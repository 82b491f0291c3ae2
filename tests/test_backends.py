"""The embedded default's models in-process (no Ray): hearing, answering and speaking work, and an
abandoned answer frees the model for the next session."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import numpy as np
import pytest

from deployments.asr import ASR
from deployments.llm import LLM, LLMError, LocalEngine
from deployments.tts import TTS
from parley.config import ASRConfig, LLMConfig, TTSConfig
from parley.engine.types import ChatMessage, Finish
from tests.support.speech import decode_opus, resample, speak

QUESTION = [ChatMessage(role="user", content="What is the capital of France?")]
STORY = [ChatMessage(role="user", content="Tell me a long story about a dragon and a knight.")]


@pytest.fixture(scope="module")
def asr() -> ASR:
    return ASR(ASRConfig())


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(LLMConfig(max_tokens=300))


@pytest.fixture(scope="module")
def tts() -> TTS:
    return TTS(TTSConfig())


def words(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace())


# -- ASR ----------------------------------------------------------------------------------------


async def test_asr_hears_a_spoken_question(asr: ASR) -> None:
    transcript = await asr.transcribe(speak("What is the capital of France?"))
    assert "capital" in words(transcript.text)
    assert "france" in words(transcript.text)
    assert transcript.audio_s == pytest.approx(2.0, abs=1.0)


def test_a_short_clip_cannot_loop_to_the_decoders_limit() -> None:
    """Whisper tiny sometimes repeats itself on noisy audio up to its 448-token limit (1-2 s here):
    a clip is given no more tokens than its length can carry."""
    from deployments.asr import FasterWhisperBackend

    backend = FasterWhisperBackend(ASRConfig())
    seen: list[int] = []
    generate = backend.model.model.generate

    def spy(*args: object, **options: object) -> object:
        seen.append(int(options["max_length"]))  # type: ignore[call-overload]
        return generate(*args, **options)

    backend.model.model = type("Spy", (), {"generate": staticmethod(spy)})()  # type: ignore[assignment]
    text = backend.transcribe_batch([speak("What is the capital of France?")])[0].text
    assert "capital" in words(text), text
    assert seen and seen[0] < 60, f"a 2 s clip may run to {seen[0]} tokens"


@pytest.mark.parametrize(
    "audio",
    [np.zeros(16000, np.int16), np.zeros(16000, np.float64), np.zeros((2, 16000), np.float32), np.zeros(0, np.float32)],
    ids=["int16", "float64", "stereo", "empty"],
)
async def test_asr_rejects_audio_it_cannot_use(asr: ASR, audio: np.ndarray) -> None:
    with pytest.raises(ValueError):
        await asr.transcribe(audio)


# -- LLM, local ---------------------------------------------------------------------------------


def local_engine(llm: LLM) -> LocalEngine:
    assert isinstance(llm.engine, LocalEngine)
    return llm.engine


async def wait_until_free(engine: LocalEngine, timeout: float = 1.0) -> None:
    """Take and give back the model's lock: proves no generation is still running."""
    await asyncio.wait_for(engine.lock.acquire(), timeout)
    engine.lock.release()


async def test_local_llm_streams_a_reply_in_pieces(llm: LLM) -> None:
    deltas = [d async for d in llm.stream_reply(QUESTION)]
    assert len(deltas) > 1
    assert all(deltas)
    assert "".join(deltas).strip()


async def test_the_local_llm_says_when_its_length_limit_cut_the_answer(llm: LLM) -> None:
    short = LLM(llm.config.model_copy(update={"max_tokens": 4}))
    items = [d async for d in short.stream_reply(STORY, finish=True)]
    assert items[-1] == Finish(reason="length") and all(isinstance(d, str) for d in items[:-1])


async def test_closing_the_reply_stops_the_local_model(llm: LLM) -> None:
    reply = llm.stream_reply(STORY)
    assert await anext(reply)
    await reply.aclose()
    await wait_until_free(local_engine(llm))  # a 300-token story would hold it for ~3 s


async def test_cancelling_the_turn_stops_the_local_model(llm: LLM) -> None:
    first = asyncio.Event()

    async def turn() -> None:
        async for _ in llm.stream_reply(STORY):
            first.set()

    task = asyncio.create_task(turn())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_free(local_engine(llm))


async def test_concurrent_sessions_queue_for_the_local_model(llm: LLM) -> None:
    async def opening() -> str:  # the first few deltas are enough to prove each session got the model
        deltas = []
        async with aclosing(llm.stream_reply(STORY)) as reply:
            async for delta in reply:
                deltas.append(delta)
                if len(deltas) == 5:
                    break
        return "".join(deltas)

    openings = await asyncio.gather(opening(), opening(), opening())
    assert all(o.strip() for o in openings)
    await wait_until_free(local_engine(llm))


async def test_a_conversation_longer_than_the_context_is_an_llm_error() -> None:
    small = LLM(LLMConfig(context_tokens=128))
    with pytest.raises(LLMError):
        async for _ in small.stream_reply([ChatMessage(role="user", content="word " * 500)]):
            pass
    await wait_until_free(local_engine(small))


# -- TTS ----------------------------------------------------------------------------------------


async def test_tts_speaks_a_sentence_that_asr_understands(tts: TTS, asr: ASR) -> None:
    packets = [p async for p in tts.synthesize("The quick brown fox jumps over the lazy dog.")]
    assert packets
    assert {p.samples for p in packets} == {960}
    audio = resample(decode_opus(packets), 48000, 16000)
    heard = words((await asr.transcribe(audio)).text)
    for word in ("quick", "brown", "fox"):
        assert word in heard


@pytest.mark.parametrize("text", ["", "   \n "])
async def test_tts_of_empty_text_is_silent(tts: TTS, text: str) -> None:
    assert [p async for p in tts.synthesize(text)] == []


async def test_tts_unknown_voice_lists_the_voices(tts: TTS) -> None:
    with pytest.raises(ValueError, match="heart"):
        async for _ in tts.synthesize("Hello.", voice="nobody"):
            pass


async def test_reading_ahead_reads_the_prompt_start_and_the_answer_is_the_same(llm: LLM) -> None:
    """After a prompt start read ahead (the history and a scene note) the answer still comes; reading ahead while
    an answer generates does nothing and blocks nothing."""
    start = [ChatMessage(role="user", content="[Camera note: I see a cup.]\n")]
    whole = [ChatMessage(role="user", content="[Camera note: I see a cup.]\nWhat am I holding?")]
    await llm.read_ahead(start)
    after = "".join([d async for d in llm.stream_reply(whole)])
    assert after.strip(), "an answer comes after reading ahead (sampled at 0.2, its words may differ from one without)"
    stream = llm.stream_reply(STORY)
    await anext(stream)
    await asyncio.wait_for(llm.read_ahead(start), timeout=1.0)  # skipped: an answer is generating
    await stream.aclose()
