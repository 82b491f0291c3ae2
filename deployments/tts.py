"""Speech synthesis: text in, 20 ms Opus packets on the 48 kHz RTP clock out, as they are made.

Invariant: the replica's event loop never runs the model or the encoder. Each sentence is
synthesized and encoded in a worker thread, and its packets are yielded before the next sentence
starts, so the first packet of a reply never waits for the last sentence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterator

import numpy as np
from hibari import SAMPLE_RATE, Hibari
from hibari.voices import VOICES

from media.audio import trim_edges
from media.opus import OpusEncoder
from parley.config import TTSConfig
from parley.logs import setup_logging
from parley.types import OpusPacket

log = logging.getLogger("parley.tts")


class TTSError(RuntimeError):
    """The TTS engine failed (e.g. a voice that is not in the package could not be fetched)."""


class TTS:
    """The TTS deployment: `synthesize(text, voice) -> async iterator of OpusPacket`."""

    def __init__(self, config: TTSConfig) -> None:
        setup_logging()
        start = time.perf_counter()
        self.config = config
        self.voices: list[str] = list(VOICES)
        self.sample_rate: int = SAMPLE_RATE
        self._engines: dict[str, Hibari] = {}
        self._loading = asyncio.Lock()
        self._check_voice(config.voice)
        log.info("loading hibari voice %s", config.voice)
        engine = self._load(config.voice)
        engine("Ready.")  # loads the G2P lexicons and warms the ONNX session before the first turn
        log.info("ready in %.2f s", time.perf_counter() - start)

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncGenerator[OpusPacket, None]:
        """Speak `text` (one or more sentences) and yield its Opus packets, sentence by sentence.

        Empty or whitespace-only text yields nothing. An unknown voice raises ValueError that lists
        the voices there are.
        """
        name = voice or self.config.voice
        self._check_voice(name)
        if not text.strip():
            return
        engine = await self._engine(name)
        sentences: Iterator[np.ndarray] = engine.stream(text)
        encoder = OpusEncoder(self.sample_rate, bitrate=self.config.opus_bitrate)
        while True:
            packets = await asyncio.to_thread(self._next_sentence, sentences, encoder)
            if packets is None:
                break
            for packet in packets:
                yield packet
        for packet in encoder.flush():
            yield packet

    @staticmethod
    def _next_sentence(sentences: Iterator[np.ndarray], encoder: OpusEncoder) -> list[OpusPacket] | None:
        audio = next(sentences, None)
        if audio is None:
            return None
        return encoder.encode(trim_edges(np.asarray(audio, np.float32), SAMPLE_RATE))

    def _check_voice(self, name: str) -> None:
        if name not in self.voices:
            raise ValueError(f"unknown voice {name!r}; voices: {', '.join(self.voices)}")

    async def _engine(self, name: str) -> Hibari:
        if name in self._engines:
            return self._engines[name]
        async with self._loading:  # one download per voice, however many sessions ask at once
            if name not in self._engines:
                log.info("loading hibari voice %s", name)
                await asyncio.to_thread(self._load, name)
        return self._engines[name]

    def _load(self, name: str) -> Hibari:
        try:
            engine = Hibari(voice=name)
        except (RuntimeError, OSError) as e:
            raise TTSError(f"could not load voice {name!r}: {e}") from e
        self._engines[name] = engine
        return engine
