"""Which speech recognition hears people best within the latency a conversation allows?

Every candidate ASR model hears the same clips through the path the ingress gives a push-to-talk
turn: 48 kHz microphone frames (optionally through Opus first, as a browser sends them) into the
session's `Recorder` with its echo canceller, the turn's audio cut from the tape as `Utterance`
cuts it (from the press, with the pre-roll, to the end of speech plus its padding), then the
app's `FasterWhisperBackend` with the app's settings (int8, 2 threads, greedy, the short window).

- sentences: everyday questions of its own (SENTENCES), none of which the tests or the other
  benchmarks use;
- voices: hibari's bundled voice at two paces and espeak-ng accents at several speeds, also none
  of which the tests use (VOICES);
- conditions: clean; a fan (brown noise) at -45 and -38 dBFS RMS; a room of other talkers
  (babble, espeak-ng) and music made here (chords, bass, melody), both at -38 dBFS; the noise runs
  through the whole stream, 1 s before the press to the end, as a microphone's would;
- models: tiny.en (bundled), and each installed `asr.model` from parley.local_models'
  WHISPER_CATALOGUE (base, ...); one not installed is skipped with its pip command; `MODEL@SECONDS`
  runs it with that `asr.window_s` (the encoder's window, which sets most of its cost).

It prints, per model, word error rate per voice x condition, clips whose every content word was
heard ("key words": what an answer needs), and one transcription's wall time per clip (p50 / p95;
models interleaved clip by clip, so background load falls on all alike). A benchmark, not a test:
it passes or fails nothing. About 0.5 s a clip for tiny.en and base together on 2 cores.

    python benchmarks/hearing.py                                 # every installed model, every clip
    python benchmarks/hearing.py --models tiny.en,base --sentences 6 --conditions clean,fan-38
    python benchmarks/hearing.py --opus 32000 --json /tmp/hearing.json --verbose
    python benchmarks/hearing.py --models tiny.en@10,base@10,base@7     # MODEL@SECONDS: its asr.window_s
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import av  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.asr_noise import edit_distance, normalise, opus_round_trip  # noqa: E402
from deployments.asr import SAMPLE_RATE, FasterWhisperBackend  # noqa: E402
from media.echo import EchoCanceller  # noqa: E402
from media.speech import babble, brown_noise, espeak, music, resample, speak, trim  # noqa: E402
from parley.config import ASRConfig  # noqa: E402
from parley.engine.backchannel import FUNCTION_WORDS  # noqa: E402
from parley.engine.recorder import Recorder  # noqa: E402
from parley.engine.settings import TurnSettings  # noqa: E402
from parley.engine.utterance import END_PAD_S  # noqa: E402
from parley.local_models import WHISPER_CATALOGUE, LocalModelMissing  # noqa: E402

MIC_RATE = 48000

SENTENCES = [
    "Which animal is known as the king of the jungle?",
    "How many minutes should I boil a potato?",
    "What language do people speak in Brazil?",
    "Can you tell me why leaves change colour in autumn?",
    "How many strings does a violin have?",
    "What is the freezing point of water in Fahrenheit?",
    "Who invented the telephone?",
    "Is a tomato a fruit or a vegetable?",
    "What should I feed a goldfish?",
    "How long is a marathon in kilometres?",
    "Which country has the most people?",
    "What is the loudest animal in the ocean?",
]

VOICES: dict[str, Callable[[str], np.ndarray]] = {
    "hibari": lambda text: speak(text, MIC_RATE),
    "hibari-fast": lambda text: speak(text, MIC_RATE, speed=1.25),
    "rp-160": lambda text: espeak(text, MIC_RATE, "en-gb-x-rp", speed=160),
    "midlands-f-150": lambda text: espeak(text, MIC_RATE, "en-gb-x-gbcwmd+f2", speed=150),
    "lancaster-195": lambda text: espeak(text, MIC_RATE, "en-gb-x-gbclan", speed=195),
    "us-m4-135": lambda text: espeak(text, MIC_RATE, "en-us+m4", speed=135),
    "us-f4-185": lambda text: espeak(text, MIC_RATE, "en-us+f4", speed=185),
}

CONDITIONS: dict[str, Callable[[int, list[int]], np.ndarray] | None] = {
    "clean": None,
    "fan-45": lambda n, seed: brown_noise(n, -45.0, seed, MIC_RATE),
    "fan-38": lambda n, seed: brown_noise(n, -38.0, seed, MIC_RATE),
    "babble-38": lambda n, seed: babble(n, -38.0, seed, MIC_RATE),
    "music-38": lambda n, seed: music(n, -38.0, seed, MIC_RATE),
}

LEAD_S = 1.0
"""Microphone audio before the press (the recorder keeps a pre-roll of it)."""
AFTER_S = 0.4
"""Audio between the last word and the key coming up."""


def models() -> dict[str, str | None]:
    """Every model name -> ASRConfig.model (None: the bundled tiny.en)."""
    return {"tiny.en": None, **{name: name for name in WHISPER_CATALOGUE}}


@dataclass
class Clip:
    sentence: str
    voice: str
    condition: str
    stream: np.ndarray
    """48 kHz float32: LEAD_S before the press, the speech, AFTER_S to the release."""


@dataclass
class Result:
    model: str
    voice: str
    condition: str
    sentence: str
    heard: str
    errors: int
    words: int
    key_words: bool
    asr_s: float


def content_words(text: str) -> set[str]:
    return {w for w in normalise(text) if w not in FUNCTION_WORDS}


def make_clips(sentences: list[str], voices: list[str], conditions: list[str], opus: int) -> list[Clip]:
    clips = []
    for i, sentence in enumerate(sentences):
        for v, voice in enumerate(voices):
            speech = trim(VOICES[voice](sentence))
            lead, after = np.zeros(round(LEAD_S * MIC_RATE), np.float32), np.zeros(round(AFTER_S * MIC_RATE), np.float32)
            dry = np.concatenate([lead, speech, after])
            for c, condition in enumerate(conditions):
                make = CONDITIONS[condition]
                stream = dry.copy() if make is None else dry + make(dry.size, [i, v, c])
                if opus:
                    stream = resample(opus_round_trip(resample(stream, MIC_RATE, SAMPLE_RATE), opus), SAMPLE_RATE, MIC_RATE)
                clips.append(Clip(sentence, voice, condition, np.clip(stream, -1, 1).astype(np.float32)))
        print(f"  speech made: {i + 1}/{len(sentences)} sentences", flush=True)
    return clips


def frames(audio: np.ndarray) -> list[av.AudioFrame]:
    """20 ms s16 mono frames at 48 kHz, as aiortc decodes a browser's microphone."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % 960, np.int16)])
    out = []
    for i in range(0, len(pcm), 960):
        frame = av.AudioFrame.from_ndarray(pcm[i : i + 960].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = MIC_RATE
        frame.pts = i
        out.append(frame)
    return out


def turn_audio(stream: np.ndarray) -> np.ndarray:
    """What the ASR gets for this push-to-talk turn in the app: the key pressed LEAD_S into the
    stream, released at its end; the recorder's tape from the utterance's start to its end plus
    the padding `Utterance` adds."""
    recorder = Recorder(TurnSettings(hands_free=False), max_record_s=60.0, canceller=EchoCanceller(lambda: None))
    chunks = frames(stream)
    lead = round(LEAD_S * MIC_RATE / 960)
    recorder.preload(stream[: lead * 960], MIC_RATE)
    start = recorder.press().sample
    for frame in chunks[lead:]:
        recorder.feed(frame)
    end = recorder.release()
    assert end is not None
    return recorder.audio(start, end.sample + round(END_PAD_S * SAMPLE_RATE))


def run(args: argparse.Namespace) -> dict:
    available = models()
    names = [m for m in args.models.split(",") if m] if args.models else list(available)
    voices = [v for v in args.voices.split(",") if v]
    conditions = [c for c in args.conditions.split(",") if c]
    for given, known in (([n.partition("@")[0] for n in names], available), (voices, VOICES), (conditions, CONDITIONS)):
        unknown = [x for x in given if x not in known]
        if unknown:
            raise SystemExit(f"unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    started = time.perf_counter()
    engines: dict[str, FasterWhisperBackend] = {}
    for name in names:
        t = time.perf_counter()
        model, _, window = name.partition("@")
        try:
            engines[name] = FasterWhisperBackend(ASRConfig(model=available[model], window_s=float(window) if window else None))
        except LocalModelMissing as e:
            print(f"skipping {name}: {e}", flush=True)
            continue
        print(f"loaded {name} in {time.perf_counter() - t:.1f} s", flush=True)
    sentences = SENTENCES[: args.sentences]
    print(f"making speech: {len(sentences)} sentences x {len(voices)} voices x {len(conditions)} conditions", flush=True)
    clips = make_clips(sentences, voices, conditions, args.opus)
    results: list[Result] = []
    for n, clip in enumerate(clips, 1):
        audio = turn_audio(clip.stream)
        ref = normalise(clip.sentence)
        for name, engine in engines.items():
            t = time.perf_counter()
            heard = engine.transcribe(audio).text
            took = time.perf_counter() - t
            r = Result(name, clip.voice, clip.condition, clip.sentence, heard, edit_distance(ref, normalise(heard)), len(ref),
                       content_words(clip.sentence) <= content_words(heard), took)  # fmt: skip
            results.append(r)
            if args.verbose and not r.key_words:
                print(f"    {name:8s} {clip.condition:10s} {clip.voice:15s} {clip.sentence!r} -> {heard!r}", flush=True)
        if n % 25 == 0 or n == len(clips):
            print(f"  {n}/{len(clips)} clips ({time.perf_counter() - started:.0f} s)", flush=True)
    settings = {"sentences": len(sentences), "voices": voices, "conditions": conditions, "opus_bitrate": args.opus}
    return {
        "settings": settings | {"seconds": round(time.perf_counter() - started, 1)},
        "models": list(engines),
        "clips": [asdict(r) for r in results],
    }


def _wer(rs: list[dict]) -> float:
    return 100 * sum(r["errors"] for r in rs) / max(1, sum(r["words"] for r in rs))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_summary(summary: dict) -> None:
    s, clips = summary["settings"], summary["clips"]
    print(
        f"\n{s['sentences']} sentences x {len(s['voices'])} voices x {len(s['conditions'])} conditions; "
        f"{'Opus at ' + str(s['opus_bitrate']) + ' b/s' if s['opus_bitrate'] else 'no codec'}; {s['seconds']:.0f} s in all"
    )
    conditions = s["conditions"]
    print(f"\n{'model':9s}" + "".join(f"{c:>17s}" for c in conditions) + f"{'all':>17s}{'p50 ms':>8s}{'p95 ms':>8s}")
    for model in summary["models"]:
        mine = [r for r in clips if r["model"] == model]
        cells = ""
        for group in [[r for r in mine if r["condition"] == c] for c in conditions] + [mine]:
            keys = sum(r["key_words"] for r in group)
            cells += f"{_wer(group):>7.1f}% {keys:>4d}/{len(group):<4d}"
        times = [r["asr_s"] for r in mine]
        print(f"{model:9s}{cells}{1000 * statistics.median(times):>8.0f}{1000 * _pct(times, 0.95):>8.0f}")
    print("\nWER % per voice (" + " / ".join(conditions) + "):")
    for model in summary["models"]:
        print(f"  {model}")
        for voice in s["voices"]:
            mine = [r for r in clips if (r["model"], r["voice"]) == (model, voice)]
            cells = " / ".join(f"{_wer([r for r in mine if r['condition'] == c]):4.1f}" for c in conditions)
            keys = [r["key_words"] for r in clips if (r["model"], r["voice"]) == (model, voice)]
            print(f"    {voice:16s} {cells}   key words {sum(keys)}/{len(keys)}")
    print(
        "\nWER: word errors over reference words; then clips with every content word of the question heard. p50/p95: one"
        " transcription's wall time (the ASR call alone, app settings, one clip at a time, as a lone turn runs)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", default="", help=f"comma-separated, from {', '.join(models())}, each optionally @WINDOW_S (default: all)"
    )
    parser.add_argument("--voices", default=",".join(VOICES), help=f"comma-separated, from {', '.join(VOICES)}")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated, from {', '.join(CONDITIONS)}")
    parser.add_argument("--sentences", type=int, default=len(SENTENCES), help=f"how many of the {len(SENTENCES)}")
    parser.add_argument("--opus", type=int, default=0, metavar="BITRATE", help="send the microphone audio through Opus first")
    parser.add_argument("--json", type=Path, help="write every clip's transcript and time here")
    parser.add_argument("--verbose", action="store_true", help="print every clip that lost a content word")
    args = parser.parse_args()
    summary = run(args)
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
