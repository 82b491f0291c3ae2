"""How many sessions one ingress process holds: CPU and memory per session, and when pacing breaks.

Starts the app on a local Ray (embedded default), finds the ingress replica's process, and ramps
sessions with the load client (`parley.tools.load`): at each level, first every session idle (microphone
audio, and a 320x240 15 fps camera unless --no-video), then the same with a third of them talking
(push-to-talk turns back to back). For each level it prints the ingress process's CPU (% of one
core) per session and its memory per session, the gap p99 between audio packets arriving from the
server (idle and talking), and release -> first audio heard p50/p95; then the first level whose
gap p99 passed 30 ms.

The load clients run on the same machine, in --workers processes of their own, so at high levels
they compete with the server for the cores: read the ingress CPU per session (its own process,
read from /proc) as the capacity figure, and the gaps as what the whole machine delivered.

    unshare --net bash -c 'ip link set lo up && .venv/bin/python benchmarks/capacity.py --levels 4,8,16'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from media.track import LATENESS_BOUNDS_MS  # noqa: E402
from parley.config import parse_args  # noqa: E402
from parley.tools.load import LoadResult, percentile, run_load  # noqa: E402
from tests.support.network import free_port  # noqa: E402

GAP_LIMIT_MS = 30.0
# The server's invitation secret, where it asks for invitations (--url at a server on a network):
# each synthetic session then gets one of its own.
SECRET = os.environ.get("PARLEY_AUTH_SECRET", "").encode() or None
TICKS = os.sysconf("SC_CLK_TCK")


class Proc:
    """A process's CPU time and memory, read from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime, all threads

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def local_app(server_flags: list[str]) -> str:
    """Start Parley on a local Ray (config from these flags) for a benchmark; returns its URL."""
    from serve_app import start

    config = parse_args(server_flags)
    config = config.model_copy(
        update={
            "server": config.server.model_copy(update={"port": free_port(), "max_sessions": 1000}),
            "webrtc": config.webrtc.model_copy(update={"ice_addresses": ["127.0.0.1"]}),
            "serve": config.serve.model_copy(update={"include_dashboard": False}),
            # every load session is its own caller (own loopback address), but leave room anyway:
            # this measures the ingress, not the per-user limits
            "limits": config.limits.model_copy(
                update={"turns_per_minute": 1000, "sessions_per_user": 1000, "sockets_per_address": 1000}
            ),
        }
    )
    return start(config)


def _worker(url: str, sessions: int, talkers: int, seconds: float, video: bool, seed: int, first: int) -> dict[str, Any]:
    """One load process: `sessions` sessions, the first `talkers` of them in turns back to back; its
    callers are numbered from `first`, so no two processes' sessions share an address or a name."""
    from parley.ingress.ice import configure_ice

    configure_ice(["127.0.0.1"], None)

    async def both() -> list[LoadResult]:
        quiet = (
            run_load(url, sessions - talkers, 0, seconds, video=video, seed=seed, show=False, secret=SECRET, first_caller=first)
            if sessions > talkers
            else None
        )
        busy = (
            run_load(
                url,
                talkers,
                100,
                seconds,
                video=video,
                seed=seed + 1,
                show=False,
                secret=SECRET,
                first_caller=first + sessions - talkers,
            )
            if talkers
            else None
        )
        return [r for r in await asyncio.gather(*(x for x in (quiet, busy) if x is not None))]

    results = asyncio.run(both())
    return {
        "connected": sum(r.connected for r in results),
        "refused": sum(r.refused for r in results),
        "turns_ok": sum(r.turns_ok for r in results),
        "turns_failed": sum(r.turns_failed for r in results),
        "first_audio_ms": [x for r in results for x in r.first_audio_ms],
        "gaps_ms": [x for r in results for x in r.gaps_ms],
    }


def processes(title: str) -> list[Proc]:
    """This machine's processes whose title (Ray sets it) starts with `title`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(title):
                found.append(Proc(int(entry.name)))
    return found


def ingress_processes() -> list[Proc]:
    found = processes("ray::ServeReplica:parley:Ingress")
    assert found, "no ingress replica process found"
    return found


def pin(ingress: list[Proc], cpus: set[int]) -> None:
    """The ingress processes (all their threads) on `cpus`; everything else Parley runs, and the load
    clients, on the other cores: the ingress's core then serves browsers and nothing else."""
    others = set(range(os.cpu_count() or 1)) - cpus
    for proc in ingress:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cpus)
    rest = processes("ray::") + processes("/work") + [Proc(os.getpid())]
    for proc in rest:
        if proc.pid in {p.pid for p in ingress}:
            continue
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), others)
            except OSError:
                pass


def pacing(url: str, processes: int) -> dict[str, list[int]]:
    """Every ingress process's pacing counts (GET /healthz until each process has answered)."""
    import ssl
    import urllib.request

    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    seen: dict[str, list[int]] = {}
    for _ in range(20 * processes):
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=5, context=insecure) as reply:
            health = json.loads(reply.read())
        seen[health["ingress"]] = health["pacing"]["packets"]
        if len(seen) == processes:
            break
    return seen


def late_p99(before: dict[str, list[int]], after: dict[str, list[int]]) -> str:
    """The bucket that holds the 99th percentile of how late packets left the server in between."""
    counts = [sum(after[k][i] - before.get(k, [0] * len(after[k]))[i] for k in after) for i in range(len(LATENESS_BOUNDS_MS) + 1)]
    total, running = sum(counts), 0
    for bound, count in zip([*LATENESS_BOUNDS_MS, None], counts, strict=True):
        running += count
        if total and running >= 0.99 * total:
            return f"<{bound}" if bound is not None else f">{LATENESS_BOUNDS_MS[-1]}"
    return "-"


def phase(url: str, sessions: int, talkers: int, seconds: float, video: bool, workers: int, ingress: list[Proc]) -> dict:
    """Run one load phase; measure the ingress over its steady middle."""
    shares = [sessions // workers + (i < sessions % workers) for i in range(workers)]
    talk = [talkers // workers + (i < talkers % workers) for i in range(workers)]
    rss_before = sum(p.rss() for p in ingress)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(_worker, url, n, t, seconds, video, 100 * i, sum(shares[:i]))
            for i, (n, t) in enumerate(zip(shares, talk, strict=True))
            if n
        ]
        time.sleep(min(8.0, seconds / 3))  # sessions connect and settle
        cpu_before, began, paced = sum(p.cpu_s() for p in ingress), time.monotonic(), pacing(url, len(ingress))
        time.sleep(seconds / 3)
        cpu = 100 * (sum(p.cpu_s() for p in ingress) - cpu_before) / (time.monotonic() - began)
        late = late_p99(paced, pacing(url, len(ingress)))
        rss = sum(p.rss() for p in ingress)
        parts = [f.result() for f in futures]
    gaps = [g for p in parts for g in p["gaps_ms"]]
    first = [x for p in parts for x in p["first_audio_ms"]]
    return {
        "connected": sum(p["connected"] for p in parts),
        "refused": sum(p["refused"] for p in parts),
        "turns_ok": sum(p["turns_ok"] for p in parts),
        "turns_failed": sum(p["turns_failed"] for p in parts),
        "cpu_per_session": cpu / max(1, sessions),
        "rss_mb_per_session": (rss - rss_before) / 2**20 / max(1, sessions),
        "gap_p99": percentile(gaps, 99) if gaps else None,
        "late_p99": late,
        "first_p50": percentile(first, 50) if first else None,
        "first_p95": percentile(first, 95) if first else None,
    }


def show(level: int, idle: dict, busy: dict) -> None:
    def ms(v: float | None) -> str:
        return "     -" if v is None else f"{v:6.0f}"

    print(
        f"{level:>8} {idle['connected']:>4}/{level:<4} {idle['cpu_per_session']:>9.2f} {idle['rss_mb_per_session']:>9.2f} "
        f"{ms(idle['gap_p99'])} {idle['late_p99']:>7} {busy['cpu_per_session']:>9.2f} {ms(busy['gap_p99'])} "
        f"{busy['late_p99']:>7} {ms(busy['first_p50'])} {ms(busy['first_p95'])} {busy['turns_ok']:>5}/{busy['turns_failed']:<3}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running Parley to measure (default: start one on a local Ray)")
    parser.add_argument("--levels", default="2,4,8,16,24,32", help="session counts to ramp through")
    parser.add_argument("--seconds", type=float, default=30, help="length of each phase")
    parser.add_argument("--no-video", dest="video", action="store_false", help="microphone only")
    parser.add_argument("--workers", type=int, default=2, help="load processes")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument(
        "--pin-ingress", type=int, metavar="CPU", help="run the ingress alone on this core (everything else on the others)"
    )
    args, server_flags = parser.parse_known_args()
    url = args.url or local_app(server_flags)
    ingress = ingress_processes()
    if args.pin_ingress is not None:
        pin(ingress, {args.pin_ingress})
    print(
        f"ingress pids {[p.pid for p in ingress]}; {os.cpu_count()} cores; video {'on' if args.video else 'off'}; "
        f"{args.seconds:g} s a phase"
    )
    print(
        f"{'sessions':>8} {'conn':>9} {'idle cpu%':>9} {'MB/sess':>9} {'gap p99':>6} {'late99':>7} {'talk cpu%':>9} "
        f"{'gap p99':>6} {'late99':>7} {'1st p50':>6} {'1st p95':>6} {'turns ok/failed':>9}"
    )
    rows, broke = [], None
    for level in [int(x) for x in args.levels.split(",")]:
        idle = phase(url, level, 0, args.seconds, args.video, args.workers, ingress)
        busy = phase(url, level, max(1, level // 3), args.seconds, args.video, args.workers, ingress)
        show(level, idle, busy)
        rows.append({"sessions": level, "idle": idle, "talking": busy})
        worst = max(x for x in (idle["gap_p99"], busy["gap_p99"], 0) if x is not None)
        if broke is None and worst > GAP_LIMIT_MS:
            broke = level
    print("cpu%: the ingress process, % of one core, per session; MB/sess: its memory growth per session")
    print(f"gap p99 first over {GAP_LIMIT_MS:g} ms at: {broke if broke is not None else 'none of these levels'} sessions")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
