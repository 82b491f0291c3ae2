"""Per-stage latency reaches Prometheus: real turns, then the node's metrics endpoint is read."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from parley.metrics import STAGES
from tests.client import ParleyClient
from tests.speech import speak

pytestmark = pytest.mark.serve


def counts(text: str, name: str) -> float:
    """Sum of a Prometheus series over all its label sets (0 when absent)."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M))


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        return await response.text()


async def test_turns_are_counted_in_every_stage_histogram(serve_app) -> None:
    port = serve_app.config.serve.metrics_export_port
    assert port is not None
    before = await scrape(port)
    client = ParleyClient(serve_app.url)
    try:
        await client.connect()
        await client.push_to_talk(speak("What color is the sky?", rate=48000))
        await client.wait_for(lambda: client.of("metrics"), timeout=60)
    finally:
        await client.close()
    deadline = time.monotonic() + 60  # Ray's metrics agent exports every few seconds
    while True:
        text = await scrape(port)
        grown = {
            s: counts(text, f"ray_parley_{s}_seconds_count") - counts(before, f"ray_parley_{s}_seconds_count") for s in STAGES
        }
        if all(v >= 1 for v in grown.values()) and counts(text, "ray_parley_turns_total") >= 1:
            break
        assert time.monotonic() < deadline, (
            f"stage counts grew by {grown}; exported: {sorted(set(re.findall(r'^(ray_parley_[a-z_]+)', text, re.M)))}"
        )
        await asyncio.sleep(1)
    assert "ray_parley_sessions{" in text
    assert 'deployment="Ingress"' in text
