"""What batching buys the transformers Whisper backend: latency per batch and per clip, and clips per second.

Builds Whisper large-v3's architecture (1.55 B parameters) with random weights, since weights cannot be
downloaded here, in fp16 with SDPA on CUDA; `--cpu` builds the tiny test Whisper on the CPU instead, a
smoke run of the same code. Each batch goes through `TransformersWhisperBackend.transcribe_batch`
(log-mel features, one `generate`, decoding), with ~5 s clips. Random weights would stop decoding at
arbitrary points, so every clip is forced to exactly `--tokens` new tokens (min_new_tokens ==
max_new_tokens); a real 5 s utterance is ~15-30 tokens.

    python benchmarks/asr_batch.py               # large-v3 shape, fp16, sdpa, cuda
    python benchmarks/asr_batch.py --cpu         # tiny shape, fp32, cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from deployments.asr import SAMPLE_RATE, TransformersWhisperBackend  # noqa: E402
from parley.config import ASRConfig  # noqa: E402
from tests.whisper_tiny import LARGE_V3, TINY, random_whisper  # noqa: E402


def clips(n: int, seconds: float) -> list[np.ndarray]:
    """`n` different clips of `seconds`: quiet noise under a tone whose pitch differs per clip."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    return [
        (0.2 * np.sin(2 * np.pi * (150 + 37 * i) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32) for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny random Whisper on the CPU (smoke run)")
    parser.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens forced per clip")
    parser.add_argument("--clip-s", type=float, default=5.0, help="length of each clip")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (the median is shown)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    transformers.logging.set_verbosity_error()  # generate warns on every call that max_new_tokens beats max_length

    if args.cpu:
        device, dtype, dims, shape = "cpu", torch.float32, TINY, "tiny test Whisper"
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU: run with --cpu for a smoke run of the tiny model")
        device, dtype, dims, shape = "cuda", torch.float16, LARGE_V3, "Whisper large-v3 shape"
    model, processor = random_whisper(dims, max_length=448, dtype=dtype, device=device)
    model.set_attn_implementation(args.attn)
    config = ASRConfig(backend="transformers", device=device, attn_implementation=args.attn, language="en")
    backend = TransformersWhisperBackend(config, model, processor)
    backend.generate_kwargs.update(min_new_tokens=args.tokens, max_new_tokens=args.tokens)

    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"{shape}, random weights: {model.num_parameters() / 1e6:.1f} M parameters, {dtype}, {args.attn}, on {where}")
    print(f"clips of {args.clip_s:g} s, padded to Whisper's 30 s window; {args.tokens} new tokens forced per clip")
    print("(min_new_tokens = max_new_tokens, so random weights cannot stop early); median of", args.repeats, "runs\n")

    audio = clips(max(sizes), args.clip_s)
    backend.transcribe_batch(audio[:1])  # warm-up: kernels, allocator, thread pools
    backend.transcribe_batch(audio[: max(sizes)])
    features = processor.feature_extractor(audio[:1], sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(features.input_features.to(device, dtype), **backend.generate_kwargs)
    print(f"check: one clip decoded to {ids.shape[-1]} tokens\n")

    print(f"{'batch':>5}  {'ms / batch':>10}  {'ms / clip':>9}  {'clips / s':>9}  {'tokens / s':>10}  {'log-mel ms':>10}")
    for size in sizes:
        times, mel = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            backend.transcribe_batch(audio[:size])  # decoding the ids waits for the GPU
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            processor.feature_extractor(audio[:size], sampling_rate=SAMPLE_RATE, return_tensors="pt", device=device)
            mel.append(time.perf_counter() - start)
        batch_s = statistics.median(times)
        print(
            f"{size:>5}  {batch_s * 1e3:>10.1f}  {batch_s / size * 1e3:>9.1f}  {size / batch_s:>9.1f}  "
            f"{size * args.tokens / batch_s:>10.0f}  {statistics.median(mel) * 1e3:>10.1f}"
        )
    print("\nlog-mel ms: the part of ms / batch spent making the padded 30 s log-mel features (timed apart)")


if __name__ == "__main__":
    main()
