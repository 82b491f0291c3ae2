"""A bounded soak: many sessions for a long time; nothing dropped, nothing failed, memory flat.

Runs the load client (`parley.tools.load`) with --sessions sessions for --minutes minutes, each sending
microphone audio (and a camera unless --no-video) the whole time and a push-to-talk turn every
~--turn-every seconds. Every --sample seconds it prints the ingress processes' memory (RSS, read
from /proc on this machine). At the end: sessions dropped, turns completed and failed, and the
memory growth over the second half of the run (the first half is warm-up: decoders start at each
session's first turn, histories fill to their bounds; that growth is printed too), with a verdict
against the bounds (0 dropped, 0 failed, second-half growth within 10 %).

Against a running Parley on this machine (the ingress processes are found by their Ray title):

    .venv/bin/python benchmarks/soak.py --url http://127.0.0.1:8080/ --sessions 20 --minutes 10

Without --url it starts the app on a local Ray first (the embedded default models). Exit status:
0 when every bound held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.capacity import SECRET, ingress_processes  # noqa: E402
from parley.tools.load import percentile, run_load  # noqa: E402

GROWTH_LIMIT = 0.10


def _worker(url: str, sessions: int, turns: int, seconds: float, video: bool, turn_every_s: float, first: int) -> dict[str, Any]:
    from parley.ingress.ice import configure_ice

    configure_ice(["127.0.0.1"], None)
    result = asyncio.run(
        run_load(
            url,
            sessions,
            turns,
            seconds,
            video=video,
            seed=first,
            show=False,
            secret=SECRET,
            first_caller=first,
            turn_every_s=turn_every_s,
        )
    )
    return {**result.public(), "first_audio_ms": result.first_audio_ms, "reasons": result.reasons}


def sample(stop: threading.Event, every_s: float, began: float, samples: list[tuple[float, int]]) -> None:
    ingress = ingress_processes()
    while not stop.wait(every_s):
        try:
            rss = sum(p.rss() for p in ingress)
        except OSError:  # an ingress process died: that is for the verdict, not a crash here
            rss = 0
        samples.append((time.monotonic() - began, rss))
        print(f"{samples[-1][0]:7.0f} s  ingress memory {rss / 2**20:8.1f} MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running Parley on this machine (default: start one on a local Ray)")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--turn-every", type=float, default=60.0, metavar="S", help="each session talks about every S seconds")
    parser.add_argument("--sample", type=float, default=10.0, metavar="S", help="memory sampling period")
    parser.add_argument("--no-video", dest="video", action="store_false", help="microphone only")
    parser.add_argument("--workers", type=int, default=2, help="load processes")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON")
    args, server_flags = parser.parse_known_args()
    if not (1 <= args.sessions <= 200 and 0 < args.minutes <= 60):
        parser.error("bounds: 1-200 sessions, up to 60 minutes")
    url = args.url
    if url is None:
        from benchmarks.capacity import local_app

        url = local_app(server_flags)
    seconds = 60 * args.minutes
    turns = max(1, int(seconds / args.turn_every) + 1)
    print(
        f"soak: {args.sessions} sessions for {args.minutes:g} min, a turn every ~{args.turn_every:g} s each, "
        f"video {'on' if args.video else 'off'}; ingress pids {[p.pid for p in ingress_processes()]}",
        flush=True,
    )
    workers = max(1, min(args.workers, args.sessions))
    shares = [args.sessions // workers + (i < args.sessions % workers) for i in range(workers)]
    stop, samples, began = threading.Event(), list[tuple[float, int]](), time.monotonic()
    sampler = threading.Thread(target=sample, args=(stop, args.sample, began, samples), daemon=True)
    sampler.start()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(_worker, url, n, turns, seconds, args.video, args.turn_every, sum(shares[:i]))
            for i, n in enumerate(shares)
        ]
        parts = [f.result() for f in futures]
    stop.set()
    sampler.join()

    connected = sum(p["connected"] for p in parts)
    dropped = sum(p["dropped"] for p in parts) + (args.sessions - connected)
    ok, failed = sum(p["turns_ok"] for p in parts), sum(p["turns_failed"] for p in parts)
    first = [x for p in parts for x in p["first_audio_ms"]]
    # Memory grows while sessions warm up (each peer's decoders start at its first turn, histories
    # and their kept images fill to their bounds); a leak keeps growing after that. So the bound
    # is on the second half of the run; the whole run's growth is printed too.
    settled = [rss for at, rss in samples if at >= seconds / 2]
    growth = (settled[-1] - settled[0]) / settled[0] if len(settled) >= 2 and settled[0] else None
    warm = [rss for at, rss in samples if at >= min(60.0, seconds / 3)]
    warmup = (settled[0] - warm[0]) / warm[0] if settled and warm and warm[0] else None
    summary = {
        "sessions": args.sessions,
        "minutes": args.minutes,
        "connected": connected,
        "dropped": dropped,
        "turns_ok": ok,
        "turns_failed": failed,
        "first_audio_ms_p50": percentile(first, 50) if first else None,
        "first_audio_ms_p95": percentile(first, 95) if first else None,
        "memory_mb_start": settled[0] / 2**20 if settled else None,
        "memory_mb_end": settled[-1] / 2**20 if settled else None,
        "memory_growth": growth,
        "memory_mb_first_minute": warm[0] / 2**20 if warm else None,
        "memory_warmup_growth": warmup,
        "refused_because": sorted({r for p in parts for r in p["reasons"]}),
    }
    held = dropped == 0 and failed == 0 and growth is not None and abs(growth) <= GROWTH_LIMIT
    print(f"sessions connected {connected}/{args.sessions}, dropped {dropped}")
    print(f"turns completed {ok}, failed {failed}")
    if first:
        print(
            f"release -> first audio heard p50 {summary['first_audio_ms_p50']:.0f} ms, p95 {summary['first_audio_ms_p95']:.0f} ms"
        )
    if warmup is not None:
        print(
            f"ingress memory while warming up (first half): {summary['memory_mb_first_minute']:.1f} -> "
            f"{summary['memory_mb_start']:.1f} MB ({100 * warmup:+.1f} %)"
        )
    if growth is not None:
        print(
            f"ingress memory over the second half {summary['memory_mb_start']:.1f} -> {summary['memory_mb_end']:.1f} MB "
            f"({100 * growth:+.1f} %, bound ±{100 * GROWTH_LIMIT:.0f} %)"
        )
    else:
        print("ingress memory: too few samples after the sessions settled")
    if summary["refused_because"]:
        print(f"refused because: {summary['refused_because']}")
    print(f"verdict: {'held' if held else 'FAILED'} (0 dropped, 0 failed turns, memory within ±{100 * GROWTH_LIMIT:.0f} %)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    sys.exit(0 if held else 1)


if __name__ == "__main__":
    main()
