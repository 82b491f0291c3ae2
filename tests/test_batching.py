"""Batching for the ASR engine: a lone call never waits, calls that come while a batch runs share
the next one, and each caller gets its own result (or its batch's error)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from deployments.asr import ASR, FasterWhisperBackend
from deployments.batching import Batcher
from parley.config import ASRConfig
from tests.support.speech import speak, trim


class Engine:
    """Runs batches that take `seconds` each, recording their contents."""

    def __init__(self, seconds: float = 0.05, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.batches: list[list[int]] = []

    async def run(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("engine failed")
        return [i * 10 for i in items]


async def test_a_lone_call_runs_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """No batch wait for a clip that finds the engine idle: the batcher never sleeps for company (a
    wall-clock bound here failed on a loaded CI host at 24 ms)."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr("deployments.batching.asyncio.sleep", sleep)
    engine = Engine(seconds=0.0)
    batcher = Batcher(engine.run, max_size=8)
    assert await batcher(1) == 10
    assert engine.batches == [[1]] and not [w for w in waits if w > 0]


async def test_calls_that_arrive_while_a_batch_runs_share_the_next_one() -> None:
    engine = Engine(seconds=0.1)
    batcher = Batcher(engine.run, max_size=3)
    first = asyncio.create_task(batcher(0))
    await asyncio.sleep(0.02)  # the first batch is running
    rest = [asyncio.create_task(batcher(i)) for i in range(1, 6)]
    assert await asyncio.gather(first, *rest) == [0, 10, 20, 30, 40, 50]
    assert engine.batches == [[0], [1, 2, 3], [4, 5]]


async def test_a_batch_error_reaches_each_of_its_callers_and_the_batcher_goes_on() -> None:
    engine = Engine(fail=True)
    batcher = Batcher(engine.run, max_size=4)
    results = await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    engine.fail = False
    assert await batcher(3) == 30


async def test_a_caller_that_left_before_its_batch_is_left_out() -> None:
    engine = Engine(seconds=0.1)
    batcher = Batcher(engine.run, max_size=4)
    first = asyncio.create_task(batcher(0))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(batcher(1))
    stays = asyncio.create_task(batcher(2))
    await asyncio.sleep(0.01)
    gone.cancel()
    assert await first == 0 and await stays == 20
    assert engine.batches == [[0], [2]]


async def test_faster_whisper_transcribes_a_batch_as_it_would_each_clip() -> None:
    backend = FasterWhisperBackend(ASRConfig())
    clips = [trim(speak(text, rate=16000)) for text in ("Open the window.", "What time is it?", "Bees make honey.")]
    assert [t.text for t in backend.transcribe_batch(clips)] == [backend.transcribe_batch([c])[0].text for c in clips]


async def test_concurrent_turns_share_faster_whisper_batches() -> None:
    asr = ASR(ASRConfig(batch_size=4))
    clips = [trim(speak(text, rate=16000)) for text in ("Open the window.", "What time is it?", "Bees make honey.")]
    texts = [t.text.lower() for t in await asyncio.gather(*(asr.transcribe(c) for c in clips))]
    assert "window" in texts[0] and "time" in texts[1] and "honey" in texts[2], texts
    assert list(asr.batch_sizes) == [3], "arriving together, they shared one engine call"


@pytest.mark.parametrize("window_s", [None, 10.0])
async def test_the_transformers_encoder_sees_the_window_asked_for(tiny_whisper_path, window_s: float | None) -> None:
    asr = ASR(ASRConfig(backend="transformers", model=str(tiny_whisper_path), device="cpu", window_s=window_s))
    seen: list[int] = []
    encoder = asr.backend.model.get_encoder()  # type: ignore[attr-defined]
    hook = encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))
    try:
        transcript = await asr.transcribe(np.zeros(16000 * 3, np.float32))
    finally:
        hook.remove()
    assert isinstance(transcript.text, str)
    assert seen[-1] == (3000 if window_s is None else 1000)
    assert encoder.embed_positions.num_embeddings == 1500, "the full positions are back after the call"
