"""What a session left behind costs the ingress: memory and sockets per detached session.

A page that connects, says hello, starts its media (microphone and a 1280x720 camera: the
session keeps its newest decoded frame) and goes away leaves a session in the ingress's memory for
a reconnect (`server.session_idle_s`). This runs an ingress in a child process (no models: none
is needed to connect) and one client that does that --sessions times, each from its own loopback
address (another user each time, so only the per-process cap `server.max_detached_sessions` holds
them), and prints after every --every sessions: the sessions the ingress holds, its memory (RSS,
from /proc) and its open sockets; at the end, memory and sockets per session left behind.

    unshare --net bash -c 'ip link set lo up && .venv/bin/python benchmarks/detached.py'
    ... benchmarks/detached.py --max-detached 100000   # as before the cap: every session stays

Loopback only; the number of sessions and the time are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LIMIT_S = 600.0


def _serve(port: int, state_dir: str, max_detached: int, ready: Any) -> None:
    import logging
    from typing import cast

    from parley.config import ParleyConfig
    from parley.engine.services import Services
    from parley.ingress.server import IngressServer

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("parley.video").setLevel(logging.ERROR)  # "scaled down", once per session
    config = ParleyConfig.model_validate(
        {
            "server": {
                "port": port,
                "state_dir": state_dir,
                "max_detached_sessions": max_detached,
                "max_sessions": 1000,
            },
            "webrtc": {"ice_addresses": ["127.0.0.1"]},
            "limits": {"sockets_per_address": 1000},
        }
    )

    async def main() -> None:
        server = IngressServer(config, cast(Services, None))
        ready.put(await server.start())
        await asyncio.Event().wait()

    asyncio.run(main())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            pass
    return count


async def health(url: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(url + "healthz") as reply:
        data: dict[str, Any] = await reply.json()
        return data


async def leave_sessions(url: str, pid: int, sessions: int, every: int, width: int, height: int) -> None:
    from parley.tools.client import Camera, ParleyClient

    began = time.monotonic()
    first = await health(url)
    base_rss, base_sockets = rss_mb(pid), sockets(pid)
    print(f"ingress at rest: {base_rss:.1f} MB, {base_sockets} sockets, {first.get('detached_sessions', '?')} sessions kept")
    print(f"{'left':>6} {'kept':>6} {'RSS MB':>8} {'sockets':>8} {'s':>6}")
    left = 0
    for i in range(sessions):
        if time.monotonic() - began > LIMIT_S:
            print(f"stopped at the time limit ({LIMIT_S:.0f} s)")
            break
        address = f"127.{1 + i // 250 % 250}.{i % 250 + 1}.{7}"
        camera = Camera(width, height, fps=2.0)
        client = ParleyClient(url, camera=camera, source_address=address)
        try:
            welcome = await client.connect(media=True)
            if "session_id" not in welcome:
                print(f"session {i}: refused: {welcome.get('reason')}")
                continue
            await client.wait_for(lambda: camera.frames >= 2, timeout=10)  # noqa: B023 - awaited here
            await asyncio.sleep(0.6)  # its frames are decoded and kept
        finally:
            await client.close()
        left += 1
        if left % every == 0:
            await asyncio.sleep(0.3)
            kept = (await health(url)).get("detached_sessions", "?")
            print(f"{left:>6} {kept:>6} {rss_mb(pid):>8.1f} {sockets(pid):>8} {time.monotonic() - began:>6.0f}")
    await asyncio.sleep(1.0)
    kept_now = (await health(url)).get("detached_sessions")  # None: an ingress from before it said
    kept = left if kept_now is None else int(kept_now)
    grown, opened = rss_mb(pid) - base_rss, sockets(pid) - base_sockets
    print(f"\n{left} sessions left behind; the ingress keeps {kept}{'' if kept_now is not None else ' (all: it has no cap)'}")
    per_left, per_kept = grown / max(1, left), grown / max(1, kept)
    print(f"memory: +{grown:.1f} MB in all, {per_left:.2f} MB per session left, {per_kept:.2f} MB per kept one")
    print(f"sockets: {opened:+d} in all ({opened / max(1, left):.2f} per session left)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=120, help="sessions to leave behind (each one connects with media)")
    parser.add_argument("--every", type=int, default=20, help="print a row after this many")
    parser.add_argument("--max-detached", type=int, default=40, help="server.max_detached_sessions (default: the default)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    args = parser.parse_args()

    from parley.ingress.ice import configure_ice
    from tests.support.network import free_port

    configure_ice(["127.0.0.1"], None)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    with tempfile.TemporaryDirectory() as state:
        server = ctx.Process(target=_serve, args=(free_port(), state, args.max_detached, ready), daemon=True)
        server.start()
        try:
            url = ready.get(timeout=120)
            assert server.pid is not None
            print(f"max_detached_sessions {args.max_detached}; camera {args.width}x{args.height}")
            asyncio.run(leave_sessions(url, server.pid, min(args.sessions, 2000), max(1, args.every), args.width, args.height))
        finally:
            server.terminate()
            server.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
