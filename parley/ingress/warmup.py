"""One turn's every path, run once by an ingress before it reports ready.

Invariant: it goes through what a real turn uses (audio cleanup, the ASR, LLM and TTS service
calls over their Serve handles, frame to JPEG, the sentence splitter) and touches no session. What
it warms is caches, thread pools, connections to replicas and lazily loaded libraries, so the first
user's first turn costs what later turns cost. A stage that fails here is logged and the start
goes on: the stage's own turn-time message will tell users (an endpoint may be down for a while).
"""

from __future__ import annotations

import asyncio
import logging
import time

import av
import numpy as np

from media.audio import normalize
from media.image import frame_to_data_url
from media.text import SentenceSplitter
from parley.engine.services import Services
from parley.engine.types import ChatMessage

log = logging.getLogger("parley.warmup")

RATE = 48000
"""The browser's microphone rate, as aiortc decodes it."""


def _voiced_chunk(seconds: float = 0.8) -> np.ndarray:
    """Packed s16 mono PCM shaped like a decoded WebRTC frame: a tone loud enough to count as speech."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * 200 * t)).astype(np.int16).reshape(1, -1)


async def _stage(name: str, work: object) -> None:
    began = time.perf_counter()
    try:
        await work  # type: ignore[misc]
    except Exception as exc:
        log.warning("warm-up of %s failed (%s); its first turn will be slower or say what is wrong", name, exc)
        return
    log.info("warm-up of %s took %.2f s", name, time.perf_counter() - began)


async def warm_up(services: Services, *, system_prompt: str, voice: str | None) -> None:
    """Run audio cleanup, ASR, the LLM's first token, one TTS sentence and a JPEG, once each."""

    async def asr() -> None:
        audio = await asyncio.to_thread(normalize, [_voiced_chunk()], 1, RATE)
        if audio is not None:
            await services.transcribe(audio)

    async def llm() -> None:
        messages = [ChatMessage(role="system", content=system_prompt), ChatMessage(role="user", content="Hello.")]
        stream = services.stream_reply(messages)
        splitter = SentenceSplitter()
        try:
            async for delta in stream:  # the first token is all a turn waits for; stop generating then
                if isinstance(delta, str):
                    splitter.feed(delta)
                break
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    async def tts() -> None:
        async for _ in services.synthesize("Hello.", voice):
            pass

    async def image() -> None:
        await asyncio.to_thread(frame_to_data_url, av.VideoFrame(64, 48, "yuv420p"))

    await asyncio.gather(_stage("ASR", asr()), _stage("LLM", llm()), _stage("TTS", tts()), _stage("camera frame", image()))
