"""Speech synthesis: text in, Opus packets on the 48 kHz RTP clock out, as they are made.

Invariant: `synthesize` yields each packet as soon as it exists and, when the engine fails, raises
`TTSError` (a message a user can act on) after the packets it already had; an unknown local voice
is a ValueError. The replica's event loop never runs a model or an encoder: hibari synthesizes
and encodes each sentence in a worker thread; an OpenAI-compatible endpoint's Ogg Opus is parsed
as it streams and its packets pass through untouched. Closing the iterator early (barge-in) stops
the work: no further sentence is synthesized, the HTTP response is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Protocol

import numpy as np

from media.audio import trim_edges
from media.ogg import OggOpusParser
from media.opus import OpusEncoder, OpusLevelMeter
from media.packet import OpusPacket
from parley.config import TTSConfig, openai_api_key
from parley.logs import setup_logging, starting

if TYPE_CHECKING:
    import openai
    from hibari import Hibari

log = logging.getLogger("parley.tts")


class TTSError(RuntimeError):
    """Speech synthesis failed; the message says how, in words a user can act on (Parley's own: the
    engine's or the endpoint's text goes to the log, not into this message)."""

    for_user = True
    """The page may show the message as it is (`parley.engine.reply.user_message`)."""


class TTSEngine(Protocol):
    """A loaded backend. `speak` yields lists of Opus packets with their true 48 kHz durations, each
    list as soon as its packets exist (a sentence's, or what one network read brought), raises
    TTSError (after the packets it had) on failure, and stops its work when closed early."""

    default_voice: str

    def speak(self, text: str, voice: str) -> AsyncGenerator[list[OpusPacket], None]: ...


class TTS:
    """The TTS deployment: `synthesize(text, voice) -> async iterator of OpusPacket`, and the same
    in chunks, `synthesize_chunks`, which is what crosses Ray: one streamed item per sentence (or
    network read) instead of one per 20 ms packet, each item costing ~1.6 ms on both sides."""

    def __init__(self, config: TTSConfig) -> None:
        setup_logging()
        start = time.perf_counter()
        self.config = config
        with starting(log):
            self.engine: TTSEngine = HibariEngine(config) if config.backend == "hibari" else OpenAISpeechEngine(config)
        self.voice: str = config.voice or self.engine.default_voice
        log.info("ready in %.2f s (%s, voice %s)", time.perf_counter() - start, config.backend, self.voice)

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncGenerator[OpusPacket, None]:
        """Speak `text` (one or more sentences) in `voice` (default: the configured one) and yield
        its Opus packets as they are made. Empty or whitespace-only text yields nothing."""
        async with aclosing(self.synthesize_chunks(text, voice)) as chunks:
            async for chunk in chunks:
                for packet in chunk:
                    yield packet

    async def synthesize_chunks(self, text: str, voice: str | None = None) -> AsyncGenerator[list[OpusPacket], None]:
        """`synthesize`, with the packets that exist together yielded together (never empty lists)."""
        if not text.strip():
            return
        async with aclosing(self.engine.speak(text, voice or self.voice)) as chunks:
            async for chunk in chunks:
                if chunk:
                    yield chunk


class HibariEngine:
    """The bundled hibari voices (24 kHz PCM), encoded to 20 ms Opus packets in a worker thread."""

    default_voice = "heart"

    def __init__(self, config: TTSConfig) -> None:
        from hibari import SAMPLE_RATE
        from hibari.voices import VOICES

        self.config = config
        self.voices: list[str] = list(VOICES)
        self.sample_rate: int = SAMPLE_RATE
        self._engines: dict[str, Hibari] = {}
        self._loading = asyncio.Lock()
        voice = config.voice or self.default_voice
        self._check_voice(voice)
        log.info("loading hibari voice %s", voice)
        # A sentence through every step a turn takes (G2P lexicons, the ONNX session, trimming, the
        # Opus encoder), so the first turn's speech costs what every later one does.
        self._next_sentence(self._load(voice).stream("Ready."), OpusEncoder(self.sample_rate, bitrate=config.opus_bitrate))

    async def speak(self, text: str, voice: str) -> AsyncGenerator[list[OpusPacket], None]:
        """Sentence by sentence: each one's packets are yielded, together, before the next is
        synthesized. An unknown voice raises ValueError that lists the voices there are."""
        self._check_voice(voice)
        engine = await self._engine(voice)
        sentences: Iterator[np.ndarray] = engine.stream(text)
        encoder = OpusEncoder(self.sample_rate, bitrate=self.config.opus_bitrate)
        while (packets := await asyncio.to_thread(self._next_sentence, sentences, encoder)) is not None:
            yield packets
        yield encoder.flush()

    def _next_sentence(self, sentences: Iterator[np.ndarray], encoder: OpusEncoder) -> list[OpusPacket] | None:
        audio = next(sentences, None)
        if audio is None:
            return None
        return encoder.encode(trim_edges(np.asarray(audio, np.float32), self.sample_rate))

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
        from hibari import Hibari

        try:
            engine = Hibari(voice=name)
        except (RuntimeError, OSError) as e:
            log.warning("could not load hibari voice %s: %r", name, e)
            raise TTSError(f"The voice {name!r} could not be loaded") from e
        self._engines[name] = engine
        return engine


class OpenAISpeechEngine:
    """An OpenAI-compatible /audio/speech endpoint asked for Ogg Opus; its packets pass through.

    The `openai` client retries 429s, 5xxs and connection failures itself (`max_retries`), but only
    before the first byte: a stream cut half-way is not retried, since its packets are already out.
    """

    default_voice = "alloy"

    def __init__(self, config: TTSConfig) -> None:
        import openai

        self.config = config
        self.client = openai.AsyncOpenAI(
            base_url=config.base_url, api_key=openai_api_key(config) or "none", max_retries=config.max_retries
        )
        self.url = str(self.client.base_url).rstrip("/")
        log.info("speech from %s at %s", config.model, self.url)

    async def speak(self, text: str, voice: str) -> AsyncGenerator[list[OpusPacket], None]:
        import httpx2
        import openai

        parser = OggOpusParser()
        meter = OpusLevelMeter()  # the session compares what it plays with the microphone (echo)
        try:
            async with self.client.audio.speech.with_streaming_response.create(
                model=self.config.model, voice=voice, input=text, response_format="opus", speed=self.config.speed
            ) as response:
                async for chunk in response.iter_bytes():
                    yield [p.model_copy(update={"level": meter.level(p.data)}) for p in parser.feed(chunk)]
        except openai.AuthenticationError as e:
            log.warning("speech endpoint %s refused the API key: %r", self.url, e)
            raise TTSError(f"The speech endpoint refused the API key (check ${self.config.api_key_env})") from e
        except openai.APIStatusError as e:
            raise TTSError(self._status_message(e)) from e
        except openai.APIConnectionError as e:
            log.warning("could not reach the speech endpoint at %s: %r", self.url, e)
            raise TTSError("Could not reach the speech endpoint") from e
        except httpx2.TransportError as e:  # raised unwrapped once the body is streaming
            log.warning("the speech stream from %s broke: %r", self.url, e)
            raise TTSError("The speech stream was cut off") from e
        except ValueError as e:
            log.warning("the speech endpoint %s sent audio that is not Ogg Opus: %s", self.url, e)
            raise TTSError("The speech endpoint sent audio that is not Ogg Opus") from e
        parser.end()
        if parser.truncated:
            raise TTSError("The speech stream was cut off")

    def _status_message(self, e: openai.APIStatusError) -> str:
        """A plain sentence for the page; the endpoint's own words go to the log only."""
        detail = e.message.splitlines()[0][:200] if e.message else ""
        if e.status_code == 429:
            log.warning("speech endpoint %s is overloaded (HTTP 429): %s", self.url, detail)
            return "The speech endpoint is overloaded (HTTP 429)"
        if e.status_code >= 500:
            log.warning("speech endpoint %s failed (HTTP %s): %s", self.url, e.status_code, detail)
            return f"The speech endpoint failed (HTTP {e.status_code})"
        log.warning("speech endpoint %s rejected a request (HTTP %s): %s", self.url, e.status_code, detail)
        return f"The speech endpoint rejected the request (HTTP {e.status_code})"
