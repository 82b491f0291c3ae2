"""Per-stage latency reaches Prometheus: real turns, then the node's metrics endpoint is read."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from pathlib import Path

import aiohttp
import pytest

from parley.engine.metrics import STAGES
from parley.tools.client import Camera
from tests.support import photos
from tests.support.client import ParleyClient
from tests.support.network import free_port
from tests.support.speech import speak

pytestmark = pytest.mark.serve


def counts(text: str, name: str) -> float:
    """Sum of a Prometheus series over all its label sets (0 when absent)."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M))


def received(text: str) -> float:
    """Microphone packets that came, over all ingresses (the `received` outcome of the counter)."""
    line = r'^ray_parley_microphone_packets_total\{[^}]*outcome="received"[^}]*\} ([0-9.eE+-]+)$'
    return sum(float(v) for v in re.findall(line, text, re.M))


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        return await response.text()


async def test_turns_are_counted_in_every_stage_histogram(serve_app) -> None:
    port = serve_app.config.serve.metrics_export_port
    assert port is not None
    before = await scrape(port)
    # a camera, so the turn's frame gets a scene note (the vision stages)
    camera = Camera(fps=2, image=photos.rgb("dog"))
    client = ParleyClient(serve_app.url, camera=camera)
    try:
        await client.connect()
        await client.wait_for(lambda: camera.frames >= 3, timeout=30)  # the server has a frame when the turn starts
        await client.push_to_talk(speak("What color is the sky?", rate=48000))
        await client.wait_for(lambda: client.of("metrics"), timeout=60)
    finally:
        await client.close()
    deadline = time.monotonic() + 60  # Ray's metrics agent exports every few seconds
    while True:
        text = await scrape(port)
        grown = {  # a push-to-talk turn with a camera has every stage but the hands-free end of turn
            s: counts(text, f"ray_parley_{s}_seconds_count") - counts(before, f"ray_parley_{s}_seconds_count")
            for s in STAGES
            if s != "end_of_turn"
        }
        microphone = received(text) - received(before)
        if all(v >= 1 for v in grown.values()) and counts(text, "ray_parley_turns_total") >= 1 and microphone >= 50:
            break
        assert time.monotonic() < deadline, (
            f"stage counts grew by {grown}; exported: {sorted(set(re.findall(r'^(ray_parley_[a-z_]+)', text, re.M)))}"
        )
        await asyncio.sleep(1)
    assert "ray_parley_sessions{" in text
    assert 'deployment="Ingress"' in text


@pytest.mark.skipif(not shutil.which("prometheus"), reason="Debian's prometheus is not installed")
async def test_debian_prometheus_finds_the_nodes_through_rays_service_discovery(serve_app, tmp_path: Path) -> None:
    import ray

    context = ray.get_runtime_context()
    discovery = Path(context.get_temp_dir()) / context.get_session_name() / "prom_metrics_service_discovery.json"
    deadline = time.monotonic() + 30
    while not discovery.exists():  # the dashboard writes it shortly after start
        assert time.monotonic() < deadline, "Ray wrote no service-discovery file"
        await asyncio.sleep(0.5)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: ray\n"
        f"    file_sd_configs: [{{files: ['{discovery.resolve()}'], refresh_interval: 1s}}]\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    prometheus = await asyncio.create_subprocess_exec(
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    client = ParleyClient(serve_app.url)
    try:
        await client.connect(media=False)
        await client.sio.emit("text", {"text": "Count this turn."})
        await client.wait_for(lambda: [m for m in client.messages("assistant") if m["state"] == "done"], timeout=60)
        query = f"http://127.0.0.1:{port}/api/v1/query?query=sum(ray_parley_turns_total)"
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(query) as response:
                        result = (await response.json())["data"]["result"]
                        if result and float(result[0]["value"][1]) >= 1:
                            break
                assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
                await asyncio.sleep(1)
    finally:
        await client.close()
        prometheus.terminate()
        await asyncio.wait_for(prometheus.wait(), 10)
        log.close()
