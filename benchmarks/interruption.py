"""Interruptions in a real browser: Parley's own voice in the microphone, backchannels, and how
quickly "wait, stop" stops it (headless Chromium, hands-free, a WebAudio microphone).

For each echo level (--echo=none,-20,-6: dB relative to what the page plays; "none" for no echo;
write it with "=", as the values start with a minus) a fresh page
asks for a long story --trials times, and while each is spoken:
- for the first 3 s only its own voice comes back: every hold ("paused") and interruption there is
  a self-interruption;
- "Mm-hmm." and "Yeah." are said (hibari's voice), 3 s apart: an answer they interrupt, or a user
  turn made of one, is a backchannel wrongly taken for an interruption;
- then "Wait, stop." at the same level as the questions: the barge-in delay is from its first
  sample to the later of (the page showing the answer paused or interrupted) and (the last loud
  sample of Parley's audio after that); a "Wait, stop." that has not interrupted within 5 s is a miss.
Prints one table row per level, then the echo canceller's CPU cost per session (AEC3, decoding
what was sent, the echo-likeness check) measured on this machine without a browser, and the word
error rate of Whisper tiny.en on clean sentences with and without the canceller (no echo).

Any flag the benchmark does not know goes to the app it starts (`--no-turn-echo-cancel`,
`--no-turn-interruption-backchannels`, ...), for before/after runs. Run it where loopback-only ICE works (as root):
    unshare --net bash -c 'ip link set lo up && .venv/bin/python benchmarks/interruption.py'
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.browser_voice import RATE, opened, start_local_app, wait_quiet  # noqa: E402
from tests.support.browser_mic import encode  # noqa: E402
from tests.support.speech import speak, trim  # noqa: E402

STORY = "Tell me a long story about a dragon who learns to bake bread, with many details."
BACKCHANNELS = ("Mm-hmm.", "Uh-huh.", "Yeah.", "Right.", "Okay.", "I see.", "(laugh)", "(cough)")
"""Said over the story, three a story, in turn; "(laugh)" and "(cough)" are made, not spoken."""
INTERRUPTIONS = ("Wait, stop.", "Hold on.", "Sorry, what?", "No, no.", "Stop there, please.")
"""One a story, after the backchannels, in turn."""
PER_STORY = 3
"""Backchannels said over each story."""

ANSWER_JS = """(before) => {
  const all = document.querySelectorAll('#chat [data-role="assistant"]');
  return all.length > before ? all[before].dataset.id : null;
}"""
COUNT_JS = """(role) => document.querySelectorAll(`#chat [data-role="${role}"]`).length"""
STATES_JS = "(id) => window.__bench.states.filter((s) => s.id === id)"


@dataclass
class Level:
    name: str
    trials: int = 0
    self_holds: int = 0
    self_interruptions: int = 0
    backchannels: int = 0
    backchannels_taken: int = 0
    stops: int = 0
    misses: int = 0
    delays_ms: list[float] = field(default_factory=list)
    stop_ms: list[float] = field(default_factory=list)
    decided_ms: list[float] = field(default_factory=list)
    """From the interruption's first sample to the page showing it interrupted."""
    resume_ms: list[float] = field(default_factory=list)
    """From a backchannel's end to the held answer playing again."""
    notes: list[str] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    """The page's loaded phrases, by index: 'voice: text'."""


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running Parley (default: start one on a local Ray)")
    parser.add_argument("--echo", default="none,-20,-10,-6,0", help="echo levels in dB, comma-separated ('none': no echo)")
    parser.add_argument("--trials", type=int, default=2, help="stories per voice and level (1-10)")
    parser.add_argument(
        "--voices",
        default="hibari",
        help="comma-separated voices of the user (hibari, or benchmarks/hearing.py's: rp-160, lancaster-195, ...)",
    )
    parser.add_argument("--time-limit", type=float, default=1500, help="give up after this many seconds in all")
    parser.add_argument(
        "--skip-cpu", action="store_true", help="do not measure the echo canceller's CPU cost and its effect on transcripts"
    )
    return parser.parse_known_args()


async def now(page: Any) -> float:
    return float(await page.evaluate("performance.now()"))


async def states(page: Any, answer: str) -> list[dict[str, Any]]:
    return list(await page.evaluate(STATES_JS, answer))


async def finished(page: Any, answer: str) -> bool:
    """The answer has been spoken to its end (its metrics came) or stopped."""
    return bool(
        await page.evaluate(
            """(id) => { const el = document.querySelector(`#chat [data-id="${CSS.escape(id)}"]`);
              return !el || el.dataset.state === 'interrupted' || el.dataset.state === 'error' ||
                (el.dataset.state === 'done' && !!el.querySelector('.metrics')); }""",
            answer,
        )
    )


def laugh() -> np.ndarray:
    """A short laugh: three voiced 'ha' bursts (a 190 Hz buzz with formants' worth of harmonics)."""
    t = np.arange(int(0.12 * RATE)) / RATE
    buzz = sum(np.sin(2 * np.pi * 190 * h * t) / h for h in range(1, 12)) * np.hanning(t.size)
    gap = np.zeros(int(0.08 * RATE))
    return (0.5 * np.concatenate([buzz, gap, 0.8 * buzz, gap, 0.6 * buzz]) / np.abs(buzz).max()).astype(np.float32)


def cough() -> np.ndarray:
    """A cough: a sharp burst of breathy noise, twice."""
    rng = np.random.default_rng(3)
    t = np.arange(int(0.25 * RATE)) / RATE
    burst = rng.standard_normal(t.size) * np.exp(-t * 14) * (1 - np.exp(-t * 400))
    burst = np.convolve(burst, np.ones(6) / 6, mode="same")
    return (0.6 * np.concatenate([burst, np.zeros(int(0.1 * RATE)), 0.7 * burst]) / np.abs(burst).max()).astype(np.float32)


def phrase(voice: str, text: str) -> np.ndarray:
    if text == "(laugh)":
        return laugh()
    if text == "(cough)":
        return cough()
    from benchmarks.hearing import VOICES

    audio = VOICES[voice](text) if voice in VOICES else speak(text, rate=RATE)
    return trim(audio)


async def say(page: Any, index: int, duration_s: float) -> float:
    """Say phrase `index`; returns the page time of its first sample."""
    spoken = await page.evaluate("(i) => window.__bench.say(window.__bench.questions[i]).then((s) => s.perfEnd)", index)
    return float(spoken) - 1000 * duration_s


SETTLED_JS = """() => [...document.querySelectorAll('#chat [data-role="assistant"]')].every((el) =>
  el.dataset.state === 'interrupted' || el.dataset.state === 'error' ||
  (el.dataset.state === 'done' && !!el.querySelector('.metrics')))"""


async def settle(page: Any) -> None:
    """Until every answer is over and quiet, including the one to "Wait, stop." (a turn of its own,
    which may start only after its end-of-turn wait of up to 2 s)."""
    for _ in range(2):
        await page.wait_for_function(SETTLED_JS, timeout=120000, polling=100)
        await wait_quiet(page, timeout_ms=120000)
        await asyncio.sleep(2.5)
    await page.wait_for_function(SETTLED_JS, timeout=120000, polling=100)


async def story(page: Any, level: Level, durations: list[float], said: list[int], stop: int) -> None:
    """One story: its echo alone for 3 s, then the phrases `said` (backchannels, 3 s apart), then
    phrase `stop` (an interruption). Indices are into the page's loaded phrases."""
    names = level.phrases
    await settle(page)
    users_before = int(await page.evaluate(COUNT_JS, "user"))
    before = int(await page.evaluate(COUNT_JS, "assistant"))
    asked = await now(page)
    await page.fill("#text-input", STORY)
    await page.press("#text-input", "Enter")
    await page.wait_for_function(ANSWER_JS, arg=before, timeout=60000)
    answer = str(await page.evaluate(ANSWER_JS, before))
    await page.wait_for_function("(t) => window.__bench.lastLoud > t", arg=asked, timeout=90000, polling=20)
    level.trials += 1
    # 1. its own voice only
    await asyncio.sleep(3.0)
    seen = await states(page, answer)
    level.self_holds += sum(s["state"] == "paused" for s in seen)
    if any(s["state"] == "interrupted" for s in seen):
        level.self_interruptions += 1
        level.notes.append("interrupted itself before anyone spoke")
        await settle(page)
        return
    # 2. backchannels
    users = int(await page.evaluate(COUNT_JS, "user"))
    for i in said:
        if await finished(page, answer):
            level.notes.append(f"the story ended before {names[i]!r}")
            break
        onset = await say(page, i, durations[i])
        level.backchannels += 1
        await asyncio.sleep(max(0.0, 3.0 - durations[i]))
        after = [x for x in await states(page, answer) if x["at"] > onset]
        held = [x["at"] for x in after if x["state"] == "paused"]
        if held:  # the answer held: how soon after the backchannel ended did it play again?
            resumed = [x["at"] for x in after if x["state"] == "streaming" and x["at"] > held[0]]
            if resumed:
                level.resume_ms.append(resumed[0] - (onset + 1000 * durations[i]))
        taken = any(s["state"] == "interrupted" for s in await states(page, answer))
        new_users = int(await page.evaluate(COUNT_JS, "user")) - users
        if taken or new_users:
            level.backchannels_taken += 1
            level.notes.append(f"{names[i]!r} " + ("interrupted it" if taken else "became a turn"))
        if taken:
            await settle(page)
            return
    # 3. the interruption
    if await finished(page, answer):
        level.notes.append(f"the story ended before {names[stop]!r}")
        await settle(page)
        return
    onset = await say(page, stop, durations[stop])
    level.stops += 1
    try:
        await page.wait_for_function(
            "([id, t]) => window.__bench.states.some((s) => s.id === id && s.at > t && s.state === 'interrupted')",
            arg=[answer, onset],
            timeout=5000,
        )
    except Exception:
        level.misses += 1
        level.notes.append(f"{names[stop]!r} did not interrupt within 5 s")
        await settle(page)
        return
    marks = await states(page, answer)
    shown = min(s["at"] for s in marks if s["at"] > onset and s["state"] in ("paused", "interrupted"))
    level.decided_ms.append(min(s["at"] for s in marks if s["at"] > onset and s["state"] == "interrupted") - onset)
    # Parley's audio has stopped once it has been quiet for 150 ms (longer than a gap between words).
    await page.wait_for_function(
        "(t) => performance.now() > t && performance.now() - window.__bench.lastLoud > 150", arg=shown, timeout=10000, polling=10
    )
    last_loud = float(await page.evaluate("window.__bench.lastLoud"))
    stopped = max(onset, last_loud)
    level.delays_ms.append(max(shown, stopped) - onset)
    level.stop_ms.append(stopped - onset)
    await wait_quiet(page, timeout_ms=60000)
    level.notes.append(f"users +{int(await page.evaluate(COUNT_JS, 'user')) - users_before}")


def p50_p95(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.0f} / {p95:.0f}"


def cpu_cost() -> None:
    """The echo canceller's cost per session on this machine: 20 s of an answer's echo, with and
    without anything sent."""
    from media.echo import EchoCanceller, FarEnd
    from media.opus import SILENCE_PACKET, OpusEncoder, decode_opus_frames
    from media.speech import resample

    voice = speak("The capital of France is Paris. It has been the capital for a very long time. " * 3, rate=48000)
    encoder = OpusEncoder(48000)
    packets = [p.data for p in encoder.encode(voice) + encoder.flush()]
    echo = 0.5 * resample(decode_opus_frames(packets), 48000, 16000)
    mic = np.concatenate([np.zeros(1600, np.float32), echo])[: len(packets) * 320]
    rows = []
    for name, sending in (("answer playing", True), ("quiet", False)):
        far = FarEnd()
        canceller = EchoCanceller(lambda far=far: far)  # type: ignore[misc]
        began = time.process_time()
        for n in range(len(packets)):
            far.sent(n * 960, 960, packets[n] if sending else SILENCE_PACKET)
            canceller.process(mic[n * 320 : (n + 1) * 320] if sending else np.zeros(320, np.float32))
            if n % 8 in (0, 2, 3, 5, 6):  # the recorder asks about each 32 ms window: 5 in 8 packets
                canceller.echo_like()
        spent = time.process_time() - began
        rows.append((name, 100 * spent / (len(packets) * 0.02)))
    print("\necho canceller CPU per session (AEC3, decoding what was sent, the echo-likeness check):")
    for name, share in rows:
        print(f"  {name:16} {share:.2f} % of one core")


def transcripts_check(count: int = 20) -> None:
    """With no echo, the canceller must not hurt what the ASR reads: sentences spoken by hibari and
    espeak-ng (en-us) are transcribed as they are, and after the canceller while Parley is saying
    something else (a headset: nothing comes back), which is when AEC3 runs on them."""
    from benchmarks.asr_noise import SENTENCES, make_clips, wer
    from deployments.asr import FasterWhisperBackend
    from media.echo import DELAY, EchoCanceller, FarEnd
    from media.opus import OpusEncoder
    from parley.config import ASRConfig

    clips = [c for c in make_clips(SENTENCES[:count], ["hibari", "espeak-us"], False) if c.condition == "clean"]
    other = speak("Paris is the capital of France, and it has been for a very long time. " * 6, rate=48000)
    encoder = OpusEncoder(48000)
    far_packets = [p.data for p in encoder.encode(other) + encoder.flush()]
    asr = FasterWhisperBackend(ASRConfig())
    rows: dict[str, list[tuple[str, str]]] = {}
    for clip in clips:
        rows.setdefault("as spoken", []).append((clip.sentence, asr.transcribe(clip.audio).text))
        for warm_s in (0.0, 3.0, 10.0):
            far = FarEnd()
            canceller = EchoCanceller(lambda far=far: far)  # type: ignore[misc]
            lead = np.zeros(round(warm_s * 16000), np.float32)  # Parley talking, the user quiet
            audio = np.concatenate([lead, clip.audio, np.zeros(DELAY + 320, np.float32)])
            audio += np.random.default_rng(0).normal(0, 10 ** (-70 / 20), audio.size).astype(np.float32)  # a mic's floor
            out = []
            for n in range(audio.size // 320):
                far.sent(n * 960, 960, far_packets[n % len(far_packets)])
                out.append(canceller.process(audio[n * 320 : (n + 1) * 320]))
            processed = np.concatenate(out)[DELAY + lead.size : DELAY + lead.size + clip.audio.size]
            name = f"through the canceller, Parley talking for {warm_s:g} s before"
            rows.setdefault(name, []).append((clip.sentence, asr.transcribe(processed).text))
    print(f"\nno echo (a headset), {len(clips)} clips (hibari and espeak-ng), Whisper tiny.en word error rate:")
    for name, pairs in rows.items():
        print(f"  {name:58} {wer(pairs):.1f} %")


async def run(url: str, args: argparse.Namespace) -> list[Level]:
    voices = [v for v in args.voices.split(",") if v]
    texts = [*BACKCHANNELS, *INTERRUPTIONS]
    names = [f"{voice}: {text}" for voice in voices for text in texts]
    phrases = [phrase(voice, text) for voice in voices for text in texts]
    durations = [p.size / RATE for p in phrases]
    levels: list[Level] = []
    for name in [e.strip() for e in args.echo.split(",") if e.strip()]:
        level = Level(name, phrases=names)
        levels.append(level)
        db = None if name == "none" else float(name)
        log: list[str] = []
        async with opened(url, 0.01, log, False) as page:
            await page.evaluate("(list) => window.__bench.load(list)", [encode(p) for p in phrases])
            await page.evaluate("(db) => window.__bench.setEcho(db)", db)
            await page.click("label[for=hands-free]")
            await page.locator('#turn-state[data-state="listening"]').wait_for(timeout=5000)
            n = 0
            for voice in range(len(voices)):
                for _ in range(max(1, min(args.trials, 10))):
                    base = voice * len(texts)
                    said = [base + (PER_STORY * n + k) % len(BACKCHANNELS) for k in range(PER_STORY)]
                    await story(page, level, durations, said, base + len(BACKCHANNELS) + n % len(INTERRUPTIONS))
                    await wait_quiet(page, timeout_ms=120000)
                    n += 1
        print(f"  echo {name}: {level.notes}", flush=True)
    return levels


def report(levels: list[Level]) -> None:
    print(
        "\n| echo | stories | self-holds | self-interruptions | backchannels taken | interruptions missed "
        "| audio stopped ms p50 / p95 | shown interrupted ms p50 / p95 | resumed after a backchannel ms p50 / p95 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for lv in levels:
        echo = "none" if lv.name == "none" else f"{lv.name} dB"
        print(
            f"| {echo} | {lv.trials} | {lv.self_holds} | {lv.self_interruptions} | {lv.backchannels_taken} of {lv.backchannels} "
            f"| {lv.misses} of {lv.stops} | {p50_p95(lv.stop_ms)} | {p50_p95(lv.decided_ms)} | {p50_p95(lv.resume_ms)} |"
        )


def main() -> None:
    args, server_flags = parse_args()
    started = args.url is None
    url = args.url or start_local_app(server_flags)
    try:
        levels = asyncio.run(asyncio.wait_for(run(url, args), timeout=args.time_limit))
        report(levels)
    finally:
        if started:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    if not args.skip_cpu:
        cpu_cost()
        transcripts_check()


if __name__ == "__main__":
    main()
