"""Shared fixtures: one local Ray with the Parley Serve app for the whole test session.

Only fixtures live here; the helpers they and the tests share are in tests/support/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from parley.config import ParleyConfig
from tests.support.network import free_port

if TYPE_CHECKING:
    from tests.support.fake_openai import FakeOpenAI
    from tests.support.page import Server


@dataclass
class RunningApp:
    url: str
    config: ParleyConfig


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    """A loopback OpenAI-compatible server; its key is in $PARLEY_TEST_KEY."""
    from tests.support.fake_openai import API_KEY, FakeOpenAI

    monkeypatch.setenv("PARLEY_TEST_KEY", API_KEY)
    server = await FakeOpenAI().start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def serve_app() -> Iterator[RunningApp]:
    """The real app (embedded models) on a local Ray, serving on a free loopback port."""
    import ray
    from ray import serve

    from serve_app import start

    config = ParleyConfig.model_validate(
        {
            "server": {"host": "127.0.0.1", "port": free_port(), "session_idle_s": 120},
            "webrtc": {"ice_addresses": ["127.0.0.1"]},
            # The dashboard is what writes Ray's Prometheus service-discovery file (test_metrics reads it).
            "serve": {"include_dashboard": True, "metrics_export_port": free_port()},
            "limits": {"turns_per_minute": 200},
            "llm": {"max_tokens": 60},
        }
    )
    url = start(config)
    try:
        yield RunningApp(url=url, config=config)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_whisper_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Whisper saved as a transformers folder (built here, nothing downloaded)."""
    from tests.support.whisper_tiny import save_random_whisper

    return save_random_whisper(tmp_path_factory.mktemp("whisper-tiny-session"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (the Debian package) on a free loopback port, for this test session only."""
    from tests.support.redis import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The page tests' fake microphone (a spoken question) and camera files, for Chromium."""
    from tests.support.chromium import write_fake_media

    wav, y4m, _ = write_fake_media(tmp_path_factory.mktemp("page-media"))
    return wav, y4m


@pytest.fixture
async def server(fake: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Server]:
    """The page tests' ingress, in this process, on the OpenAI backend pointed at `fake`."""
    from tests.support.page import Server

    running = Server(fake, free_port(), "memory", tmp_path / "state")
    await running.start()
    yield running
    await running.stop()
