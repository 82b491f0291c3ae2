"""What each GPU speech-recognition engine costs per batch, for Whisper large-v3 and large-v3-turbo.

For every engine and model it prints, for batch sizes 1, 4, 16 and 64: ms per batch, ms per clip,
clips per second and that against batch 1; then whether the targets hold (batch 1 at most 150 ms
for a 4 s clip with 24 tokens, batch 16 at least 10x the clips/s of batch 1).

Weights cannot be downloaded here, so every model is the real architecture with random weights,
built at run time; random weights would stop decoding anywhere, so each clip is forced to exactly
--tokens new tokens (a real 4 s utterance is ~15-30). Engines:

- transformers: `TransformersWhisperBackend` (fp16, SDPA), padded to Whisper's 30 s window;
- transformers-10s: the same, with the encoder run on a 10 s window (asr.window_s);
- ctranslate2: faster-whisper's CTranslate2 model (converted from the same random weights),
  float16, on a 10 s window, through `FasterWhisperBackend`. It needs CUDA 12's cuBLAS and cuDNN
  (pip: nvidia-cublas-cu12, nvidia-cudnn-cu12); where they are missing it says so and goes on.

    python benchmarks/asr_batch.py                    # on a GPU: every engine and model
    python benchmarks/asr_batch.py --cpu              # tiny shape on the CPU: a smoke run (CI)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from deployments.asr import SAMPLE_RATE, FasterWhisperBackend, TransformersWhisperBackend  # noqa: E402
from parley.config import ASRConfig  # noqa: E402
from parley.engine.types import Transcript  # noqa: E402
from tests.support.whisper_tiny import LARGE_V3, TINY, random_whisper  # noqa: E402

MODELS = {"large-v3": LARGE_V3, "large-v3-turbo": {**LARGE_V3, "decoder_layers": 4}}
ENGINES = ("transformers", "transformers-10s", "ctranslate2")
Run = Callable[[list[np.ndarray]], list[Transcript]]


def clips(n: int, seconds: float) -> list[np.ndarray]:
    """`n` different clips of `seconds`: quiet noise under a tone whose pitch differs per clip."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    return [
        (0.2 * np.sin(2 * np.pi * (150 + 37 * i) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32) for i in range(n)
    ]


def transformers_engine(dims: dict, device: str, dtype: torch.dtype, tokens: int, window_s: float | None) -> Run:
    model, processor = random_whisper(dims, max_length=448, dtype=dtype, device=device)
    config = ASRConfig(backend="transformers", device=device, language="en", window_s=window_s)
    backend = TransformersWhisperBackend(config, model, processor)
    backend.generate_kwargs.update(min_new_tokens=tokens, max_new_tokens=tokens)
    return backend.transcribe_batch


def ctranslate2_engine(dims: dict, device: str, tokens: int, folder: Path) -> Run:
    from ctranslate2.converters import TransformersConverter

    model, processor = random_whisper(dims, max_length=448)
    model.save_pretrained(folder / "hf")
    processor.save_pretrained(folder / "hf")
    quantization = "float16" if device == "cuda" else "float32"
    out = TransformersConverter(str(folder / "hf"), copy_files=["tokenizer.json"]).convert(
        str(folder / "ct2"), quantization=quantization, force=True
    )
    config = ASRConfig(model=out, device=device, compute_type=quantization, language="en", window_s=10)
    backend = FasterWhisperBackend(config)
    eot = backend.model.hf_tokenizer.token_to_id("<|endoftext|>")
    prompt = 4  # <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>
    backend.generate_kwargs.update(max_length=prompt + tokens, suppress_tokens=[-1, eot])
    return backend.transcribe_batch


def measure(run: Run, audio: list[np.ndarray], sizes: list[int], repeats: int, device: str) -> list[tuple[int, float]]:
    run(audio[:1])  # warm-up: kernels, allocator, thread pools
    run(audio[: max(sizes)])
    out = []
    for size in sizes:
        times = []
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run(audio[:size])  # returns decoded text: the GPU work is done
            times.append(time.perf_counter() - start)
        out.append((size, statistics.median(times)))
    return out


def report(name: str, rows: list[tuple[int, float]], clip_s: float, tokens: int) -> None:
    print(f"\n{name}")
    print(f"{'batch':>5}  {'ms / batch':>10}  {'ms / clip':>9}  {'clips / s':>9}  {'x batch 1':>9}")
    one = rows[0][1]
    for size, seconds in rows:
        per_clip, rate, gain = seconds / size * 1e3, size / seconds, size * one / seconds
        print(f"{size:>5}  {seconds * 1e3:>10.1f}  {per_clip:>9.1f}  {rate:>9.1f}  {gain:>9.1f}")
    by_size = dict(rows)
    verdict = [f"batch 1: {one * 1e3:.0f} ms ({'meets' if one <= 0.150 else 'misses'} <= 150 ms)"]
    if 16 in by_size:
        gain = 16 * one / by_size[16]
        verdict.append(f"batch 16: {gain:.1f}x batch 1's clips/s ({'meets' if gain >= 10 else 'misses'} >= 10x)")
    print(f"  {clip_s:g} s clips, {tokens} tokens: " + "; ".join(verdict))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the tiny test Whisper on the CPU (smoke run)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default: 1,4,16,64; --cpu: 1,2)")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens forced per clip")
    parser.add_argument("--clip-s", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (the median is shown)")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.batch_sizes or ("1,2" if args.cpu else "1,4,16,64")).split(",")]
    transformers.logging.set_verbosity_error()  # generate warns on every call that max_new_tokens beats max_length
    if args.cpu:
        device, dtype, models = "cpu", torch.float32, {"tiny": TINY}
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA GPU: run with --cpu for a smoke run of the tiny model")
        device, dtype = "cuda", torch.float16
        models = {name: MODELS[name] for name in args.models.split(",")}
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"on {where}; torch {torch.__version__}, transformers {transformers.__version__}; random weights")
    audio = clips(max(sizes), args.clip_s)
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, dims in models.items():
            for engine in args.engines.split(","):
                name = f"{engine} / {model_name}"
                try:
                    if engine == "ctranslate2":
                        run = ctranslate2_engine(dims, device, args.tokens, Path(tmp) / model_name)
                    else:
                        window = 10.0 if engine == "transformers-10s" else None
                        run = transformers_engine(dims, device, dtype, args.tokens, window)
                    rows = measure(run, audio, sizes, args.repeats, device)
                except Exception as exc:  # an engine this machine cannot run: say so, measure the rest
                    print(f"\n{name}: not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    continue
                report(name, rows, args.clip_s, args.tokens)
                if device == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
