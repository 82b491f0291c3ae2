"""Voice-to-voice latency, measured as a user would feel it, from an aiortc client.

Starts the app on a local Ray (or uses --url) and runs N turns from an aiortc client whose
microphone speaks a question (hibari's voice, its own leading and trailing silence cut off, so
the question ends with its last word):

- push-to-talk (default): the key comes up --release-after seconds (0.25) after the last word;
  it prints release -> first packet leaving the server (the server's `voice_to_voice`) and
  release -> first audio heard by the client;
- --mode hands-free: no key; it prints end of speech -> first audio heard (the end-of-turn
  silence, turn.end_of_turn.silence_s, is part of it);
- --mode barge-in: hands-free, the user talks over a long answer; it prints speech onset -> the
  answer's interruption reaching the client, and -> its audio stopping.

Then p50 and p95 of each, of every server stage, and the first-turn ratio (turn 1 against the
median of the rest). Any flag the app takes configures the server it starts (e.g.
--no-turn-speculation-enabled, --reply-first-clause-words null), for before/after comparisons. Run it where
loopback-only ICE works, e.g.:

    unshare --net bash -c 'ip link set lo up && python benchmarks/voice_to_voice.py --turns 8'
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parley.config import ParleyConfig  # noqa: E402
from parley.ingress.ice import configure_ice  # noqa: E402
from tests.support.client import ParleyClient  # noqa: E402
from tests.support.network import free_port  # noqa: E402
from tests.support.speech import speak, trim  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Name a color of the sky.",
    "How many legs does a dog have?",
    "Which planet is closest to the sun?",
    "What do bees make?",
]


STORY = "Tell me a long story about a dragon who learns to bake bread, with many details."


def p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile (with few samples, close to the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def table(rows: dict[str, list[float]]) -> None:
    print(f"\n{'':40s} {'p50 ms':>8s} {'p95 ms':>8s}   n")
    for name, values in rows.items():
        if values:
            print(f"{name:40s} {1000 * statistics.median(values):8.0f} {1000 * p95(values):8.0f} {len(values):3d}")


async def turn(client: ParleyClient, audio: np.ndarray, mode: str, release_after: float) -> tuple[float, float]:
    """One spoken turn; returns (the end of the user's turn, the first answer audio heard after it)."""
    seen = len(client.of("metrics"))
    if mode == "ptt":
        anchor = await client.push_to_talk(audio, hold_after_s=release_after)
    else:
        anchor = await client.say(audio)
    first = await client.wait_for(functools.partial(client.heard.first_sound_after, anchor), timeout=60)
    await client.wait_for(lambda: len(client.of("metrics")) > seen, timeout=120)
    return anchor, first


async def barge_in(client: ParleyClient, audio: np.ndarray) -> tuple[float, float] | None:
    """Talk over a long answer; returns (onset -> its interruption at the client, onset -> its audio
    stopped), or None when the answer was over too soon to talk over it."""
    answers = len(client.messages("assistant"))
    began = time.monotonic()
    await client.sio.emit("text", {"text": STORY})
    story = (await client.wait_for(lambda: client.messages("assistant")[answers:], timeout=60))[0]["id"]
    await client.wait_for(functools.partial(client.heard.first_sound_after, began), timeout=60)
    await asyncio.sleep(0.4)  # a few words in (answers can be short)
    if any(m["id"] == story for m in client.of("metrics")):
        return None
    onset = time.monotonic() + 0.02  # the mic sends the first sample with its next 20 ms frame
    client.mic.say(audio)

    def cut() -> float | None:
        states = ((at, d) for at, name, d in client.events if name == "state" and d.get("id") == story)
        return next((at for at, d in states if d["state"] == "interrupted"), None)

    def over() -> bool:  # the story was spoken to its end before the interruption could land
        return any(m["id"] == story for m in client.of("metrics"))

    await client.wait_for(lambda: cut() or over(), timeout=20)
    cut_at = cut()
    if cut_at is None:
        await client.wait_for(lambda: len(client.of("metrics")) >= 2 and client.of("metrics")[-1]["id"] != story, 60)
        return None
    await client.wait_for(lambda: len(client.messages("assistant")) > answers + 1, timeout=30)  # the question's answer
    await asyncio.sleep(0.5)
    loud = sorted(at for at, rms in client.heard.frames if at >= onset and rms > 0.01)
    stopped = onset
    for at, following in zip(loud, [*loud[1:], math.inf], strict=True):
        if following - at > 0.3:  # the story's last packet before the gap its interruption made
            stopped = at
            break
    seen = len(client.of("metrics"))
    await client.wait_for(lambda: len(client.of("metrics")) > seen, timeout=60)  # the answer to the question ends
    return cut_at - onset, stopped - onset


async def run(url: str, turns: int, questions: list[str], mode: str, release_after: float, photo: str | None = None) -> None:
    configure_ice(["127.0.0.1"], None)
    camera = None
    if photo is not None:
        from parley.tools.client import Camera
        from tests.support import photos

        camera = Camera(fps=2, image=photos.rgb(photo))
    client = ParleyClient(url, hands_free=mode != "ptt", camera=camera)
    await client.connect()
    await asyncio.sleep(0.5)
    rows: dict[str, list[float]] = {}
    felt: list[float] = []
    try:
        for i in range(turns):
            question = questions[i % len(questions)]
            audio = trim(speak(question, rate=48000))
            if mode == "barge-in":  # a fresh conversation each time: a small model's answers shrink with history
                await client.close()
                client = ParleyClient(url, hands_free=True)
                await client.connect()
                await asyncio.sleep(0.3)
                measured = await barge_in(client, audio)
                if measured is None:
                    print(f"turn {i + 1}: the answer ended before it could be talked over; not counted", flush=True)
                    continue
                cut, stopped = measured
                rows.setdefault("onset -> interruption at the client", []).append(cut)
                rows.setdefault("onset -> answer audio stopped", []).append(stopped)
                print(f"turn {i + 1}: onset->interrupted {cut:.3f} s, onset->audio stopped {stopped:.3f} s", flush=True)
                continue
            anchor, first = await turn(client, audio, mode, release_after)
            felt.append(first - anchor)
            metrics = client.of("metrics")[-1]
            label = "release" if mode == "ptt" else "end of speech"
            rows.setdefault(f"{label} -> first audio heard (client)", []).append(first - anchor)
            for key, value in metrics.items():
                if key != "id" and value is not None:
                    rows.setdefault(f"server {key}", []).append(value)
            shown = " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k != "id" and v is not None)
            answer = next((m["text"] for m in client.messages("assistant") if m["id"] == metrics["id"]), "")
            print(f"turn {i + 1}: {label}->first audio heard {first - anchor:.3f} s | server: {shown}", flush=True)
            print(f"        {question!r} -> {answer.strip()[:90]!r}", flush=True)
            await asyncio.sleep(0.5)
    finally:
        await client.close()
    if mode == "ptt" and "server voice_to_voice" in rows:
        rows = {"release -> first packet leaving the server": rows.pop("server voice_to_voice"), **rows}
    table(rows)
    if len(felt) > 1:
        later = statistics.median(felt[1:])
        print(
            f"first turn after start: {felt[0]:.3f} s; turns 2-{len(felt)} median {later:.3f} s; "
            f"first-turn ratio {felt[0] / later:.2f} (target <= 1.2; meaningful on a fresh server, one question)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running Parley (default: start one on a local Ray)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--mode", choices=("ptt", "hands-free", "barge-in"), default="ptt")
    parser.add_argument(
        "--release-after", type=float, default=0.25, help="push-to-talk: seconds from the last word to the release"
    )
    parser.add_argument(
        "--vary", action="store_true", help="ask a different question each turn (default: the same one, so turns compare)"
    )
    parser.add_argument("--question", help="ask this every turn (default: a fixed everyday question)")
    parser.add_argument(
        "--camera",
        metavar="PHOTO",
        help="send a camera showing a photo of tests/support/photos.py (e.g. dog): each turn's frame gets a scene note, "
        "and the server's vision_wait says what the note added to the turn",
    )
    args, server_flags = parser.parse_known_args()
    url = args.url
    if url is None:
        from parley.config import parse_args
        from serve_app import start

        config = parse_args(server_flags)
        config = ParleyConfig.model_validate(
            config.model_dump()
            | {
                "server": config.server.model_dump() | {"port": free_port()},
                "webrtc": config.webrtc.model_dump() | {"ice_addresses": ["127.0.0.1"]},
                "serve": config.serve.model_dump() | {"include_dashboard": False},
                "limits": config.limits.model_dump() | {"turns_per_minute": 1000},
            }
        )
        url = start(config)
    questions = [args.question] if args.question else QUESTIONS if args.vary else QUESTIONS[3:4]
    asyncio.run(run(url, max(1, min(args.turns, 50)), questions, args.mode, args.release_after, args.camera))


if __name__ == "__main__":
    main()
