"""The transformers Whisper backend, on a tiny random Whisper built at test time (no downloads):
recordings from concurrent sessions share one batch, each caller gets its own transcript, and a
session that hangs up before its batch starts does not hold the others back.

Random weights give arbitrary words, so these tests check types, lengths and batching, not words.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deployments.asr import ASR, TransformersWhisperBackend
from parley.config import ASRConfig
from tests.support.whisper_tiny import LARGE_V3, save_random_whisper

RATE = 16000


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_whisper(tmp_path_factory.mktemp("whisper-tiny"))


@pytest.fixture
def make_asr(tiny_whisper: Path) -> Callable[..., ASR]:
    def make(**overrides: Any) -> ASR:
        fields: dict[str, Any] = {"backend": "transformers", "model": str(tiny_whisper), "device": "cpu", **overrides}
        return ASR(ASRConfig(**fields))

    return make


def clips(n: int) -> list[np.ndarray]:
    """`n` different recordings, 1 to 3 s: tones of rising pitch, then noise."""
    out = []
    for i in range(n):
        t = np.arange(RATE * (1 + i % 3)) / RATE
        if i % 2 == 0:
            out.append((0.3 * np.sin(2 * np.pi * (200 + 400 * i) * t)).astype(np.float32))
        else:
            out.append((0.1 * np.random.default_rng(i).standard_normal(t.size)).astype(np.float32))
    return out


def alone(asr: ASR, audio: np.ndarray) -> str:
    """What the model makes of one recording in a batch of its own (greedy decoding is deterministic)."""
    assert isinstance(asr.backend, TransformersWhisperBackend)
    return asr.backend.transcribe_batch([audio])[0].text


# -- the ASR deployment class --------------------------------------------------------------------


async def test_loads_in_float32_with_sdpa_and_returns_a_transcript(make_asr: Callable[..., ASR]) -> None:
    asr = make_asr()
    assert isinstance(asr.backend, TransformersWhisperBackend)
    assert asr.backend.model.dtype == torch.float32
    assert asr.backend.model.config._attn_implementation == "sdpa"
    transcript = await asr.transcribe(np.zeros(int(RATE * 2.5), np.float32))
    assert isinstance(transcript.text, str)
    assert transcript.audio_s == pytest.approx(2.5)
    assert transcript.language == "en"
    assert list(asr.batch_sizes) == [1]


async def test_an_attention_kernel_that_is_not_installed_falls_back_to_sdpa(make_asr: Callable[..., ASR]) -> None:
    asr = make_asr(attn_implementation="flash_attention_2")  # flash-attn is not installed here
    assert isinstance(asr.backend, TransformersWhisperBackend)
    assert asr.backend.model.config._attn_implementation == "sdpa"
    assert isinstance((await asr.transcribe(clips(1)[0])).text, str)


@pytest.mark.parametrize(
    "audio",
    [np.zeros(RATE, np.int16), np.zeros(RATE, np.float64), np.zeros((2, RATE), np.float32), np.zeros(0, np.float32)],
    ids=["int16", "float64", "stereo", "empty"],
)
async def test_rejects_audio_it_cannot_use(make_asr: Callable[..., ASR], audio: np.ndarray) -> None:
    asr = make_asr()
    with pytest.raises(ValueError):
        await asr.transcribe(audio)
    assert not asr.batch_sizes


async def test_a_recording_longer_than_30_s_is_heard_to_the_end(make_asr: Callable[..., ASR]) -> None:
    asr = make_asr()
    long = np.concatenate(clips(3) * 8)[: RATE * 45]
    transcript = await asr.transcribe(long)
    assert transcript.audio_s == pytest.approx(45.0)
    halves = np.array_split(long, 2)  # two 22.5 s windows, decoded in one batch
    assert transcript.text == " ".join(alone(asr, h) for h in halves).strip()


async def test_detects_the_language_when_none_is_forced(make_asr: Callable[..., ASR]) -> None:
    asr = make_asr(language=None)
    transcript = await asr.transcribe(clips(1)[0])
    assert transcript.language == "en"  # the tiny model knows only English


@pytest.mark.serve
async def test_a_serve_replica_batches_concurrent_sessions_and_each_gets_its_own_words(serve_app, tiny_whisper: Path) -> None:
    """Six sessions' recordings arrive together at a replica with batch_size 4: batches of 4 then 2."""
    from ray import serve

    config = ASRConfig(backend="transformers", model=str(tiny_whisper), device="cpu", batch_size=4, batch_wait_s=0.3)
    app = serve.deployment(name="ASR", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=16)(ASR).bind(config)
    handle = serve.run(app, name="asr-batching", route_prefix=None)
    try:
        recordings = clips(6)
        transcripts = await asyncio.gather(*(handle.transcribe.remote(r) for r in recordings))
        assert await handle.recent_batch_sizes.remote() == [4, 2]
        here = ASR(config)
        expected = [alone(here, r) for r in recordings]
        assert len(set(expected)) > 1  # otherwise a mix-up between callers would go unseen
        assert [t.text for t in transcripts] == expected
        assert [t.audio_s for t in transcripts] == [r.size / RATE for r in recordings]
    finally:
        serve.delete("asr-batching")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
async def test_a_large_v3_shaped_whisper_batches_in_float16_with_sdpa_on_cuda(tmp_path: Path) -> None:
    folder = save_random_whisper(tmp_path / "large-v3", LARGE_V3, dtype=torch.float16, device="cuda")
    asr = ASR(ASRConfig(backend="transformers", model=str(folder), device="cuda", batch_size=8, batch_wait_s=0.2))
    assert isinstance(asr.backend, TransformersWhisperBackend)
    assert asr.backend.model.dtype == torch.float16
    assert asr.backend.model.config._attn_implementation == "sdpa"
    assert asr.backend.model.device.type == "cuda"
    assert asr.backend.model.num_parameters() > 1.5e9
    recordings = clips(4)
    transcripts = asr.backend.transcribe_batch(recordings)
    assert all(isinstance(t.text, str) for t in transcripts)
    assert [t.audio_s for t in transcripts] == [r.size / RATE for r in recordings]
