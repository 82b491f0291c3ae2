"""Does Parley answer the question asked, turn after turn, when people speak to it?

A spoken conversation of everyday questions, asked in a row in several voices (hibari and espeak-ng
accents at several speeds), in three conditions, each a fresh conversation:

- camera: the camera is on with text in view (Chromium's own test camera: a running clock and a
  frame counter, which Parley's OCR reads);
- vision-off: the camera is on but the page's "Use vision" switch is off;
- screen: a shared screen (a drawn slide, tests/support/photos.screen()) instead of the camera;

plus the lock-in case: a mumbled question first, then clear ones (camera on). Each answer is scored
as on topic (it names the question's subject, is no non-answer, and does not talk about a camera or
screen note) and right (it has the expected answer), and checked for a verbatim or near-verbatim
repeat of an earlier answer in the same conversation (difflib ratio of their words >= 0.8, or the
same first sentence of four words or more). It prints every turn, then per condition: on topic, right,
repeats, and release -> first audio heard (p50, p95) with the server's first_sentence.

--via chromium (the default): headless Chromium on the app on a local Ray (or --url), push-to-talk
with the key released 0.25 s after the last word; the browser runs on the same cores as the models.
--via session: no browser and no WebRTC, for quick before/after runs: each clip is transcribed by
the ASR deployment class in-process, and the transcript is sent as a typed turn to a Session on the
LLM, TTS and vision deployment classes (the camera is then a photo of a sign, tests/support/photos).

Any flag the benchmark does not know goes to the app (`--llm-local-model qwen2.5-coder-0.5b`,
`--prompt-scene-note always`, ...), for before/after runs. A benchmark: it prints, it asserts nothing.

    unshare --net bash -c 'ip link set lo up && .venv/bin/python benchmarks/conversation.py'
    .venv/bin/python benchmarks/conversation.py --via session --conditions camera
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parley.engine.guard import non_answer, words  # noqa: E402

RATE = 48000


@dataclass(frozen=True)
class Ask:
    text: str
    topic: tuple[str, ...]
    """An answer on topic has one of these (word starts: "freez" matches "freezes")."""
    right: tuple[str, ...]
    """A right answer has one of these."""
    key: tuple[str, ...]
    """The question was heard right when its transcript has one of these (its subject)."""


EVERYDAY = [
    Ask("What is the capital of France?", ("paris", "france", "french", "capital"), ("paris",), ("france",)),
    Ask("How many wheels does a bicycle have?", ("wheel", "bicycle", "bike", "two", "2"), ("two", "2"), ("bicycle", "bike")),
    Ask("Why is the sky blue?", ("sky", "blue", "light", "scatter", "sun", "atmospher", "air"), ("scatter", "light"), ("sky",)),
    Ask("What do bees make?", ("honey", "bee", "wax", "pollen", "nectar"), ("honey",), ("bee",)),
    Ask("Which is bigger, the sun or the moon?", ("sun", "moon"), ("sun",), ("sun", "moon")),
    Ask(
        "What happens to water when it freezes?",
        ("ice", "freez", "water", "solid", "expand", "frozen", "cold"),
        ("ice", "solid"),
        ("water", "freez"),
    ),
    Ask("Which ocean is the biggest?", ("ocean", "pacific", "atlantic", "sea"), ("pacific",), ("ocean",)),
    Ask("How many legs does a spider have?", ("leg", "spider", "eight", "8"), ("eight", "8"), ("spider",)),
    Ask("What is the opposite of hot?", ("cold", "hot", "opposite", "cool"), ("cold",), ("hot",)),
    Ask(
        "Who wrote Romeo and Juliet?",
        ("shakespeare", "romeo", "juliet", "wrote", "play", "writer", "author"),
        ("shakespeare",),
        ("romeo", "juliet"),
    ),
    Ask("How many minutes are in an hour?", ("minute", "hour", "sixty", "60"), ("sixty", "60"), ("minute", "hour")),
    Ask("Which animal is known as the king of the jungle?", ("lion", "animal", "jungle", "king"), ("lion",), ("jungle",)),
    Ask("What colour are ripe bananas?", ("yellow", "banana", "colour", "color", "ripe"), ("yellow",), ("banana",)),
    Ask("How many days are there in a week?", ("day", "week", "seven", "7"), ("seven", "7"), ("week",)),
]

MUMBLE = "umm so the wobbly grandersnatch flimmed a crondle on the mimsy"
"""The lock-in case's first utterance: mumbled words that mean nothing."""


@dataclass(frozen=True)
class Voice:
    name: str
    """hibari, or an espeak-ng voice."""
    speed: int | None = None
    """espeak-ng words a minute."""

    def say(self, text: str) -> np.ndarray:
        """`text` in this voice at 48 kHz, its own silence trimmed."""
        from media.speech import espeak, speak, trim

        if self.name == "hibari":
            return trim(speak(text, rate=RATE))
        return trim(espeak(text, rate=RATE, voice=self.name, speed=self.speed))

    def __str__(self) -> str:
        return self.name if self.speed is None else f"{self.name}@{self.speed}"


VOICES = [
    Voice("hibari"),
    Voice("en-gb+m3", 160),
    Voice("en-us+f3", 175),
    Voice("en-gb-scotland", 165),
    Voice("en-us-nyc+f2", 185),
    Voice("en-029", 150),
]
"""Who asks: question i is asked by voice i mod 6 (other voices than the tests use)."""

CONDITIONS = ("camera", "vision-off", "screen")


@dataclass
class Turn:
    voice: str
    asked: str
    ask: Ask | None
    """None: the mumble."""
    transcript: str = ""
    answer: str = ""
    note: str = ""
    """A stopped answer's or a failed turn's note."""
    heard_ms: float | None = None
    first_sentence_ms: float | None = None
    heard: bool = False
    """The transcript kept the question's subject (`Ask.key`)."""
    on_topic: bool = False
    right: bool = False
    repeats: int | None = None
    """The earlier turn (index in the conversation) whose answer this one repeats."""


@dataclass
class Conversation:
    name: str
    turns: list[Turn] = field(default_factory=list)


def _has(text: str, stems: tuple[str, ...]) -> bool:
    said = words(text)
    return any(w.startswith(stem) for w in said for stem in stems)


NOTE_TALK = re.compile(r"\b(?:camera|screen) note\b|\bthe note\b|\bnote says\b|\bdetectors?\b", re.IGNORECASE)


def score(turn: Turn, earlier: list[Turn]) -> None:
    """Mark `turn` on topic, right, and as a repeat of an earlier answer in its conversation."""
    answer = turn.answer
    if turn.ask is not None:
        turn.heard = _has(turn.transcript, turn.ask.key)
        turn.on_topic = (
            bool(answer.strip()) and not non_answer(answer) and not NOTE_TALK.search(answer) and _has(answer, turn.ask.topic)
        )
        turn.right = turn.on_topic and _has(answer, turn.ask.right)
    turn.repeats = next((i for i, t in enumerate(earlier) if repeated(answer, t.answer)), None)


def repeated(answer: str, before: str) -> bool:
    """Whether `answer` is a verbatim or near-verbatim repeat of `before`."""
    a, b = words(answer), words(before)
    if not a or not b:
        return False
    if difflib.SequenceMatcher(None, a, b).ratio() >= 0.8:  # word by word: "2 legs" is no repeat of "2 wheels"
        return True
    first = [words(re.split(r"(?<=[.!?])\s", s.strip())[0]) for s in (answer, before)]
    return len(first[0]) >= 4 and first[0] == first[1]


Plan = list[tuple[Voice, Ask | None]]
"""A conversation: who asks what, in order (None: the mumble)."""


def plan(conditions: list[str], count: int, lock_in: bool, voices: list[Voice]) -> list[tuple[str, Plan]]:
    """Each conversation: its condition and (voice, question) in order; the lock-in case last."""
    asks = EVERYDAY[:count]
    out: list[tuple[str, Plan]] = [(c, [(voices[i % len(voices)], a) for i, a in enumerate(asks)]) for c in conditions]
    if lock_in:
        after: Plan = [(voices[(i + 1) % len(voices)], a) for i, a in enumerate(EVERYDAY[::2][:6])]
        out.append(("lock-in", [(Voice("en-us+f3", 230), None), *after]))
    return out


def voices_from(spec: str) -> list[Voice]:
    """--voices: "mixed" (VOICES), or voices by name, comma-separated, each with an optional @speed."""
    if spec == "mixed":
        return VOICES
    out = []
    for item in spec.split(","):
        name, _, speed = item.strip().partition("@")
        out.append(Voice(name, int(speed) if speed else None))
    return out


# -- in Chromium ------------------------------------------------------------------------------

SCREEN_JS = """
(() => {
  if (window !== window.top || !navigator.mediaDevices) return;
  // The shared screen: a drawn slide on a canvas, in place of the browser's picker (headless has none).
  navigator.mediaDevices.getDisplayMedia = async () => {
    const canvas = document.createElement("canvas");
    const image = new Image();
    image.src = window.__screenImage;
    await image.decode();
    canvas.width = image.width;
    canvas.height = image.height;
    const ctx = canvas.getContext("2d");
    const draw = () => ctx.drawImage(image, 0, 0);
    draw();
    setInterval(draw, 200);
    return canvas.captureStream(5);
  };
})();
"""


async def chromium_conversation(url: str, condition: str, turns: Plan, args: Any) -> Conversation:
    """One conversation in a fresh headless Chromium."""
    import base64
    import io
    import shutil

    from PIL import Image
    from playwright.async_api import async_playwright

    from benchmarks.browser_voice import CONNECTED, browser_args, wait_quiet
    from tests.support import photos
    from tests.support.browser_mic import INIT_JS, encode

    conversation = Conversation(condition)
    clips = [voice.say(ask.text if ask else MUMBLE) for voice, ask in turns]
    with tempfile.TemporaryDirectory(prefix="parley-conversation-") as folder:
        flags = [a for a in browser_args(Path(folder)) if not a.startswith("--use-file-for-fake-video-capture")]
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=flags)
            try:
                page = await browser.new_page(bypass_csp=True)
                buffer = io.BytesIO()
                Image.fromarray(photos.screen()).save(buffer, format="PNG")
                screen = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
                await page.add_init_script(f"window.__screenImage = {screen!r};")
                await page.add_init_script(INIT_JS)
                await page.add_init_script(SCREEN_JS)
                await page.goto(url, timeout=30000)
                await page.wait_for_function(CONNECTED, timeout=30000, polling=50)
                await page.evaluate("(list) => window.__bench.load(list)", [encode(c) for c in clips])
                if condition == "vision-off":
                    await page.click("label[for=vision]")
                elif condition == "screen":
                    await page.click("#share")
                    await page.wait_for_function("document.querySelector('#share').classList.contains('active')", timeout=10000)
                await asyncio.sleep(2.0)  # the camera (or screen) running a moment, as when a person sits down
                await wait_quiet(page)
                for index, (voice, ask) in enumerate(turns):
                    turn = Turn(voice=str(voice), asked=ask.text if ask else MUMBLE, ask=ask)
                    await chromium_turn(page, index, turn, args)
                    score(turn, conversation.turns)
                    conversation.turns.append(turn)
                    show(index, turn)
                    await wait_quiet(page, timeout_ms=60000)
            finally:
                await browser.close()
    return conversation


NOTE_JS = """(id) => {
  const answer = document.querySelector(`#chat [data-id="${CSS.escape(String(id))}"]`);
  return answer?.querySelector(".stopped, .error")?.textContent || "";
}"""
"""The note under an answer: why Parley stopped it, or its error."""


async def chromium_turn(page: Any, index: int, turn: Turn, args: Any) -> None:
    """Ask one question by push-to-talk (browser_voice's turn) and read what the page showed for it."""
    from benchmarks.browser_voice import one_turn

    asked = await one_turn(page, turn.asked, index, args.release_after, False)
    turn.heard_ms, turn.transcript, turn.answer = asked.heard_ms, asked.transcript, asked.answer
    turn.first_sentence_ms = asked.stages.get("first_sentence")
    turn.note = asked.problem or (await page.evaluate(NOTE_JS, asked.answer_id) if asked.answer_id else "")


# -- in one process, without a browser -------------------------------------------------------------


async def session_conversation(services: Any, config: Any, condition: str, turns: Plan) -> Conversation:
    """One conversation on a Session in this process: each clip transcribed, then sent as typed."""
    import av

    from media.speech import resample
    from parley.engine.session import Session
    from parley.policy import session_settings
    from tests.support import photos

    session = Session(f"bench-{condition}-{time.monotonic_ns()}", session_settings(config), services)
    picture = photos.screen() if condition == "screen" else photos.sign()
    session.on_video_frame(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24"))
    session.set_vision(condition != "vision-off", "screen" if condition == "screen" else "camera")
    conversation = Conversation(condition)
    for index, (voice, ask) in enumerate(turns):
        turn = Turn(voice=str(voice), asked=ask.text if ask else MUMBLE, ask=ask)
        heard = await services.transcribe(resample(voice.say(turn.asked), RATE, 16000))
        turn.transcript = heard.text
        began = time.perf_counter()
        if heard.text and await session.send_text(heard.text):
            while session.answering is None and session.busy:
                await asyncio.sleep(0.005)
            reply = None if session.answering is None else session.answering.reply
            while session.busy:
                await asyncio.sleep(0.01)
            answer = session.history[-1]
            turn.answer = answer.text
            turn.note = (reply.stopped or "") if reply is not None else ""
            turn.note = turn.note or (answer.state if answer.state != "done" else "")
            if reply is not None and reply.metrics.first_sentence is not None:
                turn.first_sentence_ms = 1000 * reply.metrics.first_sentence
            turn.heard_ms = 1000 * (time.perf_counter() - began)
        score(turn, conversation.turns)
        conversation.turns.append(turn)
        show(index, turn)
    return conversation


def session_services(config: Any) -> Any:
    from deployments.asr import ASR
    from deployments.llm import LLM
    from deployments.tts import TTS
    from deployments.vision import Vision
    from parley.engine.services import LocalServices
    from parley.policy import takes_images

    vision = Vision(config.vision) if config.vision.enabled and not takes_images(config) else None
    return LocalServices(ASR(config.asr), LLM(config.llm, config.prompt), TTS(config.tts), vision)


# -- report ------------------------------------------------------------------------------------


def show(index: int, turn: Turn) -> None:
    marks = ("on topic" if turn.on_topic else "OFF TOPIC") + (", right" if turn.right else "")
    marks += "" if turn.heard else ", MISHEARD"
    if turn.ask is None:
        marks = "mumble"
    if turn.repeats is not None:
        marks += f", REPEATS turn {turn.repeats + 1}"
    heard = f"{turn.heard_ms:.0f} ms" if turn.heard_ms is not None else "-"
    print(f"  {index + 1:2d}. [{turn.voice}] {turn.asked!r}", flush=True)
    print(f"      heard {turn.transcript!r}", flush=True)
    print(
        f"      -> {turn.answer.strip()[:160]!r} ({marks}; first audio {heard}){'  NOTE: ' + turn.note if turn.note else ''}",
        flush=True,
    )


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = np.percentile(values, [50, 95])
    return f"p50 {p50:5.0f} p95 {p95:5.0f}"


def report(conversations: list[Conversation], via: str) -> None:
    print()
    start = "release -> first audio heard" if via == "chromium" else "turn sent -> answer done"
    print(
        f"{'condition':12s} {'on topic':>9s} {'right':>7s} {'repeats':>8s} {'heard':>7s} {'on topic of heard':>18s}   "
        f"{start:30s} first sentence (server)"
    )
    for c in conversations:
        asked = [t for t in c.turns if t.ask is not None]
        repeats = sum(t.repeats is not None for t in c.turns)
        heard = [t.heard_ms for t in asked if t.heard_ms is not None]
        first = [t.first_sentence_ms for t in asked if t.first_sentence_ms is not None]
        on_topic, right, n = sum(t.on_topic for t in asked), sum(t.right for t in asked), len(asked)
        clear = [t for t in asked if t.heard]
        of_heard = f"{sum(t.on_topic for t in clear)} of {len(clear)}"
        print(
            f"{c.name:12s} {on_topic:>4d} of {n:<2d} {right:>3d}/{n:<3d} {repeats:>8d} {len(clear):>3d}/{n:<3d} "
            f"{of_heard:>18s}   {ms(heard):30s} {ms(first)}"
        )
    lock = next((c for c in conversations if c.name == "lock-in"), None)
    if lock is not None and lock.turns:
        print(
            f"lock-in: the mumble was heard as {lock.turns[0].transcript!r} and answered {lock.turns[0].answer.strip()[:100]!r}"
        )
    print(
        "on topic: names the subject, no non-answer, no talk of a note; right: has the expected answer; repeats: "
        "near-verbatim; heard: the transcript kept the question's subject"
    )
    voices: dict[str, list[bool]] = {}
    for c in conversations:
        for t in c.turns:
            if t.ask is not None:
                voices.setdefault(t.voice, []).append(t.heard)
    print("heard right, by voice: " + ", ".join(f"{v} {sum(h)}/{len(h)}" for v, h in voices.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--via", choices=("chromium", "session"), default="chromium")
    parser.add_argument("--url", help="--via chromium: a running Parley (default: start one on a local Ray)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated, of {', '.join(CONDITIONS)}")
    parser.add_argument("--questions", type=int, default=12, help=f"everyday questions per condition (at most {len(EVERYDAY)})")
    parser.add_argument("--no-lock-in", action="store_true", help="skip the mumble-then-questions conversation")
    parser.add_argument(
        "--voices", default="mixed", help="mixed (hibari and five espeak-ng accents), or names: hibari,en-gb+m3@160,..."
    )
    parser.add_argument("--release-after", type=float, default=0.25, help="seconds from the last word to releasing Space")
    parser.add_argument("--time-limit", type=float, default=3600, help="give up after this many seconds in all")
    args, flags = parser.parse_known_args()
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        parser.error(f"unknown conditions: {', '.join(sorted(unknown))}")
    voices = voices_from(args.voices)
    conversations = plan(conditions, max(1, min(args.questions, len(EVERYDAY))), not args.no_lock_in, voices)
    print(f"{len(conversations)} conversation(s), via {args.via}; voices: {', '.join(str(v) for v in voices)}", flush=True)
    results: list[Conversation] = []

    async def run_all(url: str | None, services: Any, config: Any) -> None:
        for condition, turns in conversations:
            print(f"\n== {condition}", flush=True)
            shown = "camera" if condition == "lock-in" else condition
            if args.via == "chromium":
                assert url is not None
                results.append(await chromium_conversation(url, shown, turns, args))
            else:
                results.append(await session_conversation(services, config, shown, turns))
            results[-1].name = condition

    if args.via == "session":
        from parley.config import parse_args as app_args

        config = app_args(flags)
        services = session_services(config)
        asyncio.run(asyncio.wait_for(run_all(None, services, config), timeout=args.time_limit))
    else:
        from benchmarks.browser_voice import app

        with app(args.url, flags) as url:
            asyncio.run(asyncio.wait_for(run_all(url, None, None), timeout=args.time_limit))
    report(results, args.via)


if __name__ == "__main__":
    main()
