"""Voice-to-voice latency as a person hears it, in a real browser (headless Chromium).

Starts the app on a local Ray (or uses --url), opens the page in headless Chromium driven by
Playwright, and runs N turns. Push-to-talk: Space goes down, a question spoken by hibari (or
espeak-ng, --voice) plays into the page's microphone, Space comes up --release-after seconds after
the question's last word, and the page times the first sound of the answer. Hands-free (--mode
hands-free): the question plays, and the first sound of the answer is timed from its last word.
Prints, per turn, that time and the server's own stage times (the socket's `metrics` event), then
their p50/p95 and the first-turn ratio (turn 1 over the median of the later turns). The browser
runs on the same cores as the models, as on a laptop.

The microphone (--mic): `gaps` sends nothing between words, as Chromium's WebAudio microphone,
Opus DTX and some headsets do (each turn prints how many packets it sent between the last word
and the release: 0); `continuous` keeps sending (an inaudible -80 dBFS floor, as a hardware
microphone does); `noise` adds a fan-like brown noise at --noise-dbfs.

How it measures, all on the page's performance.now() clock:
- the microphone is a WebAudio MediaStreamAudioDestinationNode (an init script wraps
  getUserMedia; the camera stays Chromium's fake device), so the question starts and ends at
  known times instead of looping a WAV at an unknown phase;
- the key comes up by a KeyboardEvent dispatched from a setTimeout inside the page;
- an AnalyserNode on the remote audio track of window.parley.pc, read every 5 ms, finds the first
  sample above --threshold after the release (dated to its sample, +-1 render block, ~10 ms).
  What it times is audio leaving WebRTC's jitter buffer; the speaker adds the AudioContext's
  outputLatency (printed) on top.

Any flag the benchmark does not know goes to the app it starts (`--llm-threads 1`,
`--turn-end-of-turn-judge silence`, ...), for before/after runs. Run it where loopback-only ICE works
(as root):
    unshare --net bash -c 'ip link set lo up && .venv/bin/python benchmarks/browser_voice.py --turns 5'
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parley.config import ParleyConfig  # noqa: E402
from parley.engine.metrics import STAGES  # noqa: E402
from tests.support.browser_mic import INIT_JS, encode  # noqa: E402
from tests.support.network import free_port  # noqa: E402
from tests.support.speech import speak, trim  # noqa: E402

DEFAULT_QUESTION = "Which planet is closest to the sun?"
QUESTIONS = [
    "What is the capital of France?",
    "Name a color of the sky.",
    "How many legs does a dog have?",
    DEFAULT_QUESTION,
    "What do bees make?",
]
RATE = 48000
CONNECTED = "window.parley && window.parley.pc && window.parley.status === 'ready' && window.__bench.hooked"

STATE_JS = """(() => {
  const b = window.__bench;
  return { metrics: b.metrics, notices: b.notices, heard: b.heard, heardPoll: b.heardPoll, releasedAt: b.releasedAt };
})()"""

TEXTS_JS = """(id) => {
  const answer = document.querySelector(`#chat [data-id="${CSS.escape(String(id))}"]`);
  let user = answer?.previousElementSibling;
  while (user && user.dataset.role !== "user") user = user.previousElementSibling;
  return [user?.querySelector(".text")?.textContent || "", answer?.querySelector(".text")?.textContent || ""];
}"""


@dataclass
class Turn:
    """One push-to-talk turn as the page saw it; times in ms on the page's clock."""

    question: str
    heard_ms: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    release_late_ms: float = 0.0
    sent_between: int = 0
    ended_lag_ms: float = 0.0
    poll_lag_ms: float = 0.0
    floor: float = 0.0
    transcript: str = ""
    answer: str = ""
    answer_id: str = ""
    problem: str = ""


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running Parley (default: start one on a local Ray)")
    parser.add_argument("--turns", type=int, default=5, help="push-to-talk turns (1-50)")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="what to ask every turn")
    parser.add_argument("--vary", action="store_true", help="cycle through a few short questions instead")
    parser.add_argument("--mode", choices=("push-to-talk", "hands-free"), default="push-to-talk")
    parser.add_argument(
        "--mic", choices=("gaps", "continuous", "noise"), default="gaps", help="what the microphone sends between words"
    )
    parser.add_argument("--noise-dbfs", type=float, default=-38.0, help="--mic noise: the noise floor's level")
    parser.add_argument("--voice", choices=("hibari", "espeak"), default="hibari", help="who speaks the questions")
    parser.add_argument(
        "--release-after", type=float, default=0.25, help="seconds from the question's last word to releasing Space"
    )
    parser.add_argument("--threshold", type=float, default=0.01, help="peak level (0..1) that counts as heard")
    parser.add_argument("--time-limit", type=float, default=900, help="give up after this many seconds in all")
    parser.add_argument("--show-browser-log", action="store_true", help="print every console message of the page")
    return parser.parse_known_args()


def start_local_app(flags: list[str]) -> str:
    """The app on a local Ray, loopback only, with the rate limit out of the way; `flags` are
    serve_app.py's own (`--llm-threads 1`, `--turn-end-of-turn-judge silence`, ...), for before/after runs."""
    from parley.config import parse_args as app_args
    from serve_app import start

    config = app_args(flags)
    config = ParleyConfig.model_validate(
        config.model_dump()
        | {
            "server": config.server.model_dump() | {"port": free_port()},
            "webrtc": config.webrtc.model_dump() | {"ice_addresses": ["127.0.0.1"]},
            "serve": config.serve.model_dump() | {"include_dashboard": False},
            "limits": config.limits.model_dump() | {"turns_per_minute": 1000},
        }
    )
    return start(config)


def browser_args(folder: Path) -> list[str]:
    """tests/test_browser.py's Chromium flags, less the fake audio file (the init script is the mic)."""
    from tests.support.chromium import chromium_args, write_y4m

    y4m = folder / "camera.y4m"
    write_y4m(y4m)
    return [a for a in chromium_args(folder / "unused.wav", y4m) if not a.startswith("--use-file-for-fake-audio-capture")]


@asynccontextmanager
async def opened(url: str, threshold: float, log: list[str], verbose: bool) -> AsyncIterator[Any]:
    """The page at `url` with the bench hooks in, its WebRTC connected and its socket hooked."""
    from playwright.async_api import async_playwright

    def console(message: Any) -> None:
        line = f"console.{message.type}: {message.text}"
        if verbose:
            print(f"  [page] {line}", flush=True)
        if message.type in ("error", "warning"):
            log.append(line)

    with tempfile.TemporaryDirectory(prefix="parley-bench-") as folder:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=browser_args(Path(folder)))
            try:
                page = await browser.new_page(bypass_csp=True)  # wait_for_function uses eval, which the page's CSP forbids
                page.on("console", console)
                page.on("pageerror", lambda exc: log.append(f"pageerror: {exc}"))
                await page.add_init_script(INIT_JS)
                await page.goto(url, timeout=30000)
                await connected(page, log)
                await page.evaluate("(t) => { window.__bench.threshold = t; }", threshold)
                yield page
            finally:
                await browser.close()


async def connected(page: Any, log: list[str], timeout_ms: int = 30000) -> None:
    """Until the page's WebRTC is connected and its socket hooked; else exit saying how far it got."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(CONNECTED, timeout=timeout_ms, polling=50)
    except PlaywrightTimeout:
        status = await page.evaluate("document.getElementById('status')?.title || document.getElementById('status')?.textContent")
        trouble = "; ".join(log[-5:]) or "no console errors"
        raise SystemExit(f"browser_voice: the page did not connect in {timeout_ms / 1000:g} s ({status}); {trouble}") from None


async def press_and_speak(page: Any, index: int, release_after_s: float, hands_free: bool) -> dict[str, float]:
    """Space down, wait until the server records, say question `index`, release in the page (or,
    hands-free, just say it)."""
    if hands_free:
        return dict(await page.evaluate("([i]) => window.__bench.turn(i, 0, true)", [index]))
    await page.evaluate("document.activeElement && document.activeElement.blur()")
    recordings = await page.evaluate("window.__bench.recording.length")
    await page.keyboard.down("Space")
    try:
        await page.wait_for_function(
            "(n) => window.__bench.recording.slice(n).some((r) => r.active)", arg=recordings, timeout=5000, polling=10
        )
        timing: dict[str, float] = await page.evaluate("([i, ms]) => window.__bench.turn(i, ms)", [index, release_after_s * 1000])
    finally:
        # The page already saw its keyup; this only clears Playwright's idea that Space is held
        # (else the next keydown would be a repeat, which the page ignores).
        await page.keyboard.up("Space")
    return timing


async def one_turn(page: Any, question: str, index: int, release_after_s: float, hands_free: bool) -> Turn:
    """One spoken turn: what was heard when, and the server's stage times for it."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    turn = Turn(question=question)
    seen = await page.evaluate("window.__bench.metrics.length")
    notices = await page.evaluate("window.__bench.notices.length")
    try:
        timing = await press_and_speak(page, index, release_after_s, hands_free)
    except PlaywrightTimeout:
        turn.problem = "the server did not start recording within 5 s of Space going down"
        return turn
    turn.release_late_ms = timing["released"] - timing["target"]
    turn.sent_between = int(timing["sentBetween"])
    turn.ended_lag_ms = timing["endedAt"] - timing["perfEnd"]
    turn.floor = timing["floor"]
    try:
        await page.wait_for_function(
            "([m, n]) => window.__bench.metrics.length > m || window.__bench.notices.length > n",
            arg=[seen, notices],
            timeout=120000,
            polling=20,
        )
        state = await page.evaluate(STATE_JS)
    except PlaywrightTimeout:
        turn.problem = "no metrics within 120 s"
        return turn
    if len(state["metrics"]) <= seen:
        turn.problem = "server notice: " + "; ".join(n.get("text", "") for n in state["notices"][notices:])
        return turn
    metrics = state["metrics"][seen]
    turn.stages = {k: float(metrics[k]) * 1000 for k in STAGES if isinstance(metrics.get(k), int | float)}
    if state["heard"] is None:
        turn.problem = "answer finished but nothing above the threshold was heard"
    else:
        turn.heard_ms = state["heard"] - state["releasedAt"]
        turn.poll_lag_ms = state["heardPoll"] - state["heard"]
    turn.answer_id = str(metrics["id"])
    turn.transcript, turn.answer = await page.evaluate(TEXTS_JS, metrics["id"])
    return turn


async def wait_quiet(page: Any, quiet_ms: int = 1000, timeout_ms: int = 30000) -> None:
    """Until the received audio has stayed under the threshold for `quiet_ms`."""
    await page.wait_for_function(
        "(q) => performance.now() - window.__bench.lastLoud > q", arg=quiet_ms, timeout=timeout_ms, polling=50
    )


def show_turn(i: int, turn: Turn) -> None:
    if turn.problem:
        print(f"turn {i}: FAILED ({turn.problem})", flush=True)
        return
    heard = f"{turn.heard_ms:7.0f} ms" if turn.heard_ms is not None else "   n/a"
    stages = " ".join(f"{k}={v:.0f}" for k, v in turn.stages.items())
    print(
        f"turn {i}: first audio heard {heard} | server ms: {stages} | "
        f"{turn.sent_between} packets sent after the last word, release {turn.release_late_ms:+.1f} ms late, "
        f"heard seen {turn.poll_lag_ms:.0f} ms after onset",
        flush=True,
    )
    print(f"        {turn.transcript.strip()!r} -> {turn.answer.strip()[:90]!r}", flush=True)


def percentiles(values: list[float]) -> str:
    p50, p95 = np.percentile(values, [50, 95])
    return f"p50 {p50:7.0f} ms  p95 {p95:7.0f} ms  (n={len(values)}, min {min(values):.0f}, max {max(values):.0f})"


def report(turns: list[Turn], output_latency_ms: float, log: list[str], start: str) -> None:
    """p50/p95 of what was heard and of each server stage, the first-turn ratio, and page trouble."""
    heard = [t.heard_ms for t in turns if t.heard_ms is not None]
    print()
    if heard:
        print(f"{start} -> first audio heard   {percentiles(heard)}")
    for stage in STAGES:
        values = [t.stages[stage] for t in turns if stage in t.stages]
        if values:
            print(f"  server {stage:16s}       {percentiles(values)}")
    print(
        f"page: AudioContext outputLatency {output_latency_ms:.0f} ms (add it for the speaker itself); "
        f"level before release at most {max((t.floor for t in turns), default=0):.4f}; "
        f"source 'ended' event {statistics.median(t.ended_lag_ms for t in turns):+.0f} ms after the scheduled end (median)"
    )
    if len(turns) > 1 and turns[0].heard_ms is not None and len(heard) > 1:
        later = statistics.median(t.heard_ms for t in turns[1:] if t.heard_ms is not None)
        print(
            f"first turn {turns[0].heard_ms:.0f} ms; turns 2-{len(turns)} median {later:.0f} ms; "
            f"first-turn ratio {turns[0].heard_ms / later:.2f} (target <= 1.2)"
        )
    failed = sum(1 for t in turns if t.problem)
    if failed:
        print(f"{failed} of {len(turns)} turns failed")
    print(f"page console errors/warnings: {len(log)}")
    for line in log[:20]:
        print(f"  {line[:300]}")


def say(text: str, voice: str) -> np.ndarray:
    """`text` spoken by hibari or espeak-ng at 48 kHz, its own silence trimmed (it ends with its last word)."""
    if voice == "espeak":
        from media.speech import espeak

        return trim(espeak(text, rate=RATE, speed=165))
    return trim(speak(text, rate=RATE))


async def run(url: str, questions: list[str], args: argparse.Namespace) -> None:
    hands_free = args.mode == "hands-free"
    print(
        f"{args.mode}, microphone {args.mic}: speaking {len(set(questions))} question(s) with {args.voice}; "
        f"opening {url} in headless Chromium",
        flush=True,
    )
    audio = {q: say(q, args.voice) for q in dict.fromkeys(questions)}
    order = list(audio)
    log: list[str] = []
    turns: list[Turn] = []
    async with opened(url, args.threshold, log, args.show_browser_log) as page:
        await page.evaluate("(list) => window.__bench.load(list)", [encode(audio[q]) for q in order])
        kind = {"gaps": "none", "continuous": "dither", "noise": "brown"}[args.mic]
        await page.evaluate("([k, db]) => window.__bench.setNoise(k, db)", [kind, -80.0 if kind == "dither" else args.noise_dbfs])
        if hands_free:
            await page.click("label[for=hands-free]")
            await page.locator('#turn-state[data-state="listening"]').wait_for(timeout=5000)
        await wait_quiet(page)
        for i, question in enumerate(questions, 1):
            turn = await one_turn(page, question, order.index(question), args.release_after, hands_free)
            turns.append(turn)
            show_turn(i, turn)
            await wait_quiet(page)
        output_latency_ms = float(await page.evaluate("window.__bench.ctx.outputLatency * 1000"))
    report(turns, output_latency_ms, log, "end of question" if hands_free else "release")


@contextmanager
def app(url: str | None, flags: list[str]) -> Iterator[str]:
    """`url`, or the app started on a local Ray with `flags` (`start_local_app`), shut down after."""
    if url is not None:
        yield url
        return
    try:
        yield start_local_app(flags)
    finally:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def main() -> None:
    args, server_flags = parse_args()
    turns = max(1, min(args.turns, 50))
    pool = QUESTIONS if args.vary else [args.question]
    questions = [pool[i % len(pool)] for i in range(turns)]
    with app(args.url, server_flags) as url:
        asyncio.run(asyncio.wait_for(run(url, questions, args), timeout=args.time_limit))


if __name__ == "__main__":
    main()
