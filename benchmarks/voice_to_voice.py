"""Voice-to-voice latency, measured as a user would feel it.

Starts the app on a local Ray (or uses --url), then runs N push-to-talk turns from an aiortc
client: it speaks a question, releases the key, and times the first non-silent audio that comes
back. Also prints the server's own per-stage times for each turn. Run it where loopback-only
ICE works, e.g.: unshare --net bash -c 'ip link set lo up && python benchmarks/voice_to_voice.py'
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parley.config import ParleyConfig  # noqa: E402
from parley.ice import configure_ice  # noqa: E402
from tests.client import ParleyClient  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.speech import speak  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Name a color of the sky.",
    "How many legs does a dog have?",
    "Which planet is closest to the sun?",
    "What do bees make?",
]


async def run(url: str, turns: int, questions: list[str]) -> None:
    configure_ice(["127.0.0.1"], None)
    client = ParleyClient(url)
    await client.connect()
    felt: list[float] = []
    stages: dict[str, list[float]] = {}
    try:
        for i in range(turns):
            question = questions[i % len(questions)]
            seen = len(client.of("metrics"))
            released = await client.push_to_talk(speak(question, rate=48000))
            first = await client.wait_for(functools.partial(client.heard.first_sound_after, released), timeout=60)
            await client.wait_for(functools.partial(lambda s: len(client.of("metrics")) > s, seen), timeout=120)
            metrics = client.of("metrics")[-1]
            felt.append(first - released)
            for key, value in metrics.items():
                if key != "id" and value is not None:
                    stages.setdefault(key, []).append(value)
            shown = " ".join(f"{k}={v:.3f}" for k, v in metrics.items() if k != "id" and v is not None)
            answer = next((m["text"] for m in client.messages("assistant") if m["id"] == metrics["id"]), "")
            print(f"turn {i + 1}: release->first audio heard {first - released:.3f} s | server: {shown}", flush=True)
            print(f"        {question!r} -> {answer.strip()[:90]!r}", flush=True)
    finally:
        await client.close()
    print(f"\nrelease -> first audio heard: median {statistics.median(felt):.3f} s, min {min(felt):.3f}, max {max(felt):.3f}")
    for key, values in stages.items():
        print(f"  {key:15s} median {statistics.median(values):.3f} s  (n={len(values)})")
    if len(felt) > 1:
        later = statistics.median(felt[1:])
        print(
            f"first turn after start: {felt[0]:.3f} s; turns 2-{len(felt)} median {later:.3f} s; "
            f"first-turn ratio {felt[0] / later:.2f} (target <= 1.2; meaningful on a fresh server, one question)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="a running Parley (default: start one on a local Ray)")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument(
        "--vary", action="store_true", help="ask a different question each turn (default: the same one, so turns compare)"
    )
    args = parser.parse_args()
    url = args.url
    if url is None:
        from serve_app import start

        config = ParleyConfig.model_validate(
            {
                "server": {"port": free_port(), "ice_addresses": ["127.0.0.1"]},
                "serve": {"include_dashboard": False},
                "limits": {"turns_per_minute": 1000},
            }
        )
        url = start(config)
    asyncio.run(run(url, max(1, min(args.turns, 50)), QUESTIONS if args.vary else QUESTIONS[3:4]))


if __name__ == "__main__":
    main()
