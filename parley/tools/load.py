"""`python -m parley.tools.load`: synthetic users against a Parley deployment, to learn what it holds.

Each session connects as a browser would (socket.io, then WebRTC through aiortc), sends microphone
audio all the time (silence between questions) and, with --video, a camera; it runs push-to-talk
turns whose questions hibari speaks at start-up. It prints a live progress line, then a table:
sessions connected and refused; release -> first audio heard (p50/p95); the gaps between audio
packets arriving from the server (p50/p99, and the share over 40 ms); turns completed and failed.
--json writes the same as JSON.

Invariants: everything is bounded, in count (--sessions, --turns) and in time (--seconds, plus a
short grace for the last turns); and it talks to no host but loopback unless --i-own-this-host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import math
import os
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from media.speech import speak, trim
from parley.tools.client import Camera, ParleyClient

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a dog have?",
    "Which planet is closest to the sun?",
    "What do bees make?",
]
MAX_SESSIONS, MAX_TURNS, MAX_SECONDS = 500, 100, 3600
GRACE_S = 30.0
"""How long after --seconds the last turns may still finish before everything is stopped."""
LOUD = 0.01
"""RMS above which a received audio frame is the answer's voice, not silence."""


@dataclass
class LoadResult:
    sessions: int = 0
    connected: int = 0
    refused: int = 0
    dropped: int = 0
    """Connected sessions that lost their socket or their media before the end."""
    turns_ok: int = 0
    turns_failed: int = 0
    first_audio_ms_p50: float | None = None
    first_audio_ms_p95: float | None = None
    gap_ms_p50: float | None = None
    gap_ms_p99: float | None = None
    gaps_over_40ms_share: float | None = None
    reasons: list[str] = field(default_factory=list, repr=False)
    """Why sessions were refused."""
    first_audio_ms: list[float] = field(default_factory=list, repr=False)
    gaps_ms: list[float] = field(default_factory=list, repr=False)

    def summarise(self) -> LoadResult:
        if self.first_audio_ms:
            self.first_audio_ms_p50 = round(percentile(self.first_audio_ms, 50), 1)
            self.first_audio_ms_p95 = round(percentile(self.first_audio_ms, 95), 1)
        if self.gaps_ms:
            self.gap_ms_p50 = round(percentile(self.gaps_ms, 50), 1)
            self.gap_ms_p99 = round(percentile(self.gaps_ms, 99), 1)
            self.gaps_over_40ms_share = round(sum(g > 40 for g in self.gaps_ms) / len(self.gaps_ms), 4)
        return self

    def public(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k not in ("first_audio_ms", "gaps_ms", "reasons")}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def loopback(url: str) -> bool:
    """Whether every address the URL's host resolves to is a loopback address."""
    host = urlparse(url).hostname or ""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


@dataclass(frozen=True)
class Caller:
    """Who one synthetic session is: its invitation (if the server asks for one) and its address."""

    token: str | None = None
    source_address: str | None = None


def callers(url: str, sessions: int, secret: bytes | None) -> list[Caller]:
    """One caller per session. On loopback each comes from an address of its own (127.0.0.2, ...), as
    users on different machines would, so per-address limits see N users, not one; with the server's
    secret each gets an invitation of its own (load-0, load-1, ...)."""
    from parley.ingress.auth import mint

    spread = loopback(url) and urlparse(url).hostname in ("127.0.0.1", "localhost")
    return [
        Caller(
            token=mint(secret, f"load-{i}", 24 * 3600) if secret else None,
            source_address=f"127.0.{1 + i // 250}.{2 + i % 250}" if spread else None,
        )
        for i in range(sessions)
    ]


async def one_session(
    url: str,
    caller: Caller,
    questions: list[np.ndarray],
    turns: int,
    deadline: float,
    video: bool,
    result: LoadResult,
    rng: random.Random,
    turn_every_s: float | None = None,
) -> None:
    client = ParleyClient(
        url,
        ssl_verify=False,
        ice_addresses=("127.0.0.1",) if loopback(url) else (),
        camera=Camera() if video else None,
        token=caller.token,
        source_address=caller.source_address,
    )
    try:
        welcome = await client.connect()
    except Exception:
        result.refused += 1
        await client.close()
        return
    if "session_id" not in welcome:
        result.refused += 1
        result.reasons.append(str(welcome.get("reason") or welcome.get("text") or welcome))
        await client.close()
        return
    result.connected += 1
    started = time.monotonic()
    try:
        for _ in range(turns):
            await asyncio.sleep(rng.uniform(0.5, 1.5) * turn_every_s if turn_every_s else rng.uniform(0.5, 2.0))
            if time.monotonic() + 5 > deadline:
                break
            await one_turn(client, questions[rng.randrange(len(questions))], deadline, result)
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))  # stay on the line: idle sessions load the server too
        if not client.sio.connected or client.pc is None or client.pc.connectionState != "connected":
            result.dropped += 1
    finally:
        frames = [at for at, _ in client.heard.frames if at > started + 1.0]  # past the call's set-up
        result.gaps_ms += [1000 * (b - a) for a, b in itertools.pairwise(frames)]
        await client.close()


async def one_turn(client: ParleyClient, audio: np.ndarray, deadline: float, result: LoadResult) -> None:
    answers = len(client.messages("assistant"))
    try:
        released = await client.push_to_talk(audio, hold_after_s=0.25)
        limit = max(5.0, deadline + GRACE_S - time.monotonic())
        first = await client.wait_for(lambda: client.heard.first_sound_after(released, LOUD), timeout=limit)
        await client.wait_for(
            lambda: [m for m in client.messages("assistant")[answers:] if m["state"] != "streaming"], timeout=limit
        )
    except Exception:
        result.turns_failed += 1
        return
    done = [m for m in client.messages("assistant")[answers:] if m["state"] != "streaming"]
    if done and done[0]["state"] in ("done", "interrupted"):
        result.turns_ok += 1
        result.first_audio_ms.append(1000 * (first - released))
    else:
        result.turns_failed += 1


async def progress(result: LoadResult, began: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        print(
            f"\r{time.monotonic() - began:5.0f} s  connected {result.connected}/{result.sessions}  refused {result.refused}  "
            f"turns ok {result.turns_ok} failed {result.turns_failed}",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)


async def run_load(
    url: str,
    sessions: int,
    turns: int,
    seconds: float,
    *,
    video: bool = False,
    seed: int = 0,
    show: bool = True,
    secret: bytes | None = None,
    first_caller: int = 0,
    turn_every_s: float | None = None,
) -> LoadResult:
    """Run the load and return its numbers (the caller checks the bounds and the host)."""
    questions = [trim(speak(q, rate=48000)) for q in QUESTIONS]
    result = LoadResult(sessions=sessions)
    began = time.monotonic()
    deadline = began + seconds
    stop = asyncio.Event()
    reporter = asyncio.create_task(progress(result, began, stop) if show else stop.wait())
    rng = random.Random(seed)
    tasks = []
    who = callers(url, first_caller + sessions, secret)[first_caller:]
    for i in range(sessions):
        session = one_session(url, who[i], questions, turns, deadline, video, result, random.Random(rng.random()), turn_every_s)
        tasks.append(asyncio.create_task(session))
        await asyncio.sleep(min(0.1, seconds / 20 / max(1, sessions)) if i < sessions - 1 else 0)
    _, pending = await asyncio.wait(tasks, timeout=seconds + GRACE_S + 10)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    stop.set()
    await reporter
    return result.summarise()


def table(result: LoadResult) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    share = "-" if result.gaps_over_40ms_share is None else f"{100 * result.gaps_over_40ms_share:.2f} %"
    rows = [
        ("sessions connected / refused", f"{result.connected} / {result.refused} of {result.sessions}"),
        ("sessions dropped before the end", f"{result.dropped}"),
        ("release -> first audio heard p50 / p95", f"{ms(result.first_audio_ms_p50)} / {ms(result.first_audio_ms_p95)}"),
        ("audio packet gap p50 / p99", f"{ms(result.gap_ms_p50)} / {ms(result.gap_ms_p99)}"),
        ("audio packet gaps over 40 ms", share),
        ("turns completed / failed", f"{result.turns_ok} / {result.turns_failed}"),
    ]
    return "\n".join(f"{name:40s} {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m parley.tools.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the page's URL, e.g. http://127.0.0.1:8080/")
    parser.add_argument("--sessions", type=int, default=3, help=f"concurrent sessions (at most {MAX_SESSIONS})")
    parser.add_argument("--turns", type=int, default=2, help=f"push-to-talk turns per session (at most {MAX_TURNS})")
    parser.add_argument("--seconds", type=float, default=60, help=f"how long the load lasts (at most {MAX_SECONDS})")
    parser.add_argument(
        "--turn-every", type=float, metavar="S", help="space each session's turns ~S seconds apart (default: back to back)"
    )
    parser.add_argument("--video", action="store_true", help="send a 320x240 15 fps camera too")
    parser.add_argument("--json", type=Path, help="also write the numbers here as JSON")
    parser.add_argument(
        "--secret-env",
        metavar="VAR",
        help="environment variable holding the server's invitation secret: each session gets an invitation of its own",
    )
    parser.add_argument("--i-own-this-host", action="store_true", help="allow a host that is not loopback")
    args = parser.parse_args(argv)
    if not (1 <= args.sessions <= MAX_SESSIONS and 0 <= args.turns <= MAX_TURNS and 1 <= args.seconds <= MAX_SECONDS):
        parser.error(f"bounds: 1-{MAX_SESSIONS} sessions, 0-{MAX_TURNS} turns, 1-{MAX_SECONDS} seconds")
    if not loopback(args.url) and not args.i_own_this_host:
        parser.error(f"{args.url} is not a loopback address: load only hosts you own, and say so with --i-own-this-host")
    secret = os.environ.get(args.secret_env, "").encode() or None if args.secret_env else None
    result = asyncio.run(
        run_load(args.url, args.sessions, args.turns, args.seconds, video=args.video, secret=secret, turn_every_s=args.turn_every)
    )
    print(table(result))
    if result.reasons:
        print(f"refused because: {sorted(set(result.reasons))}")
    if args.json:
        args.json.write_text(json.dumps(result.public(), indent=2) + "\n")


if __name__ == "__main__":
    main()
