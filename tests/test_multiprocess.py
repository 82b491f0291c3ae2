"""Several ingress processes on one node, sharing one port: each browser's signalling and media
meet in one process, a process that dies takes only its own sessions, and they come back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import ray
from ray import serve

from tests.client import ParleyClient
from tests.conftest import free_port, loopback_only
from tests.speech import speak, trim

pytestmark = [
    pytest.mark.serve,
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)"),
]

APP = "parley-multi"


@pytest.fixture(scope="module")
def two_processes(serve_app) -> Iterator[str]:
    """Two ingress replicas on this node, both bound to one port, calling the session app's models."""
    from deployments.ingress import Ingress
    from parley.config import ParleyConfig

    config = ParleyConfig.model_validate(
        {
            "server": {"port": free_port(), "ice_addresses": ["127.0.0.1"]},
            "serve": {"ingress_per_node": 2},
            # every client here comes from 127.0.0.1: as one address and one (anonymous) user
            "limits": {"turns_per_minute": 200, "sessions_per_user": 32, "sockets_per_address": 32},
        }
    )
    handles = [serve.get_deployment_handle(name, app_name="parley") for name in ("ASR", "LLM", "TTS")]
    ingress = serve.deployment(
        name="Ingress", num_replicas=2, max_replicas_per_node=2, ray_actor_options={"num_cpus": 0}, health_check_period_s=1
    )(Ingress)
    serve.run(ingress.bind(config, *handles), name=APP, route_prefix=None)
    yield f"http://127.0.0.1:{config.server.port}/"
    serve.delete(APP)


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return trim(speak("What is the capital of France?", rate=48000))


@asynccontextmanager
async def on_two_processes(url: str) -> AsyncIterator[tuple[ParleyClient, ParleyClient]]:
    clients: list[ParleyClient] = []
    try:
        for _ in range(12):  # the kernel spreads connections over the processes; find one on each
            client = ParleyClient(url)
            await client.connect()
            clients.append(client)
            seen = {c.of("welcome")[0]["ingress"]: c for c in clients}
            if len(seen) == 2:
                first, second = seen.values()
                yield first, second
                return
        pytest.fail("twelve connections all landed on one ingress process")
    finally:
        for client in clients:
            await client.close()


async def spoken_turn(client: ParleyClient, question: np.ndarray) -> None:
    answers = len(client.messages("assistant"))
    released = await client.push_to_talk(question)
    await client.wait_for(lambda: [m for m in client.messages("assistant")[answers:] if m["state"] == "done"], timeout=60)
    await client.wait_for(lambda: client.heard.first_sound_after(released), timeout=30)


async def test_browsers_on_different_processes_both_talk_and_a_dead_process_loses_only_its_own(
    two_processes: str, question: np.ndarray
) -> None:
    async with on_two_processes(two_processes) as (a, b):
        await asyncio.gather(spoken_turn(a, question), spoken_turn(b, question))

        names = [
            n["name"] for n in ray.util.list_named_actors(all_namespaces=True) if n["name"].startswith(f"SERVE_REPLICA::{APP}#")
        ]
        assert len(names) == 2
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
        pair = (a, b)
        dropped = await a.wait_for(lambda: [c for c in pair if not c.sio.connected] or None, timeout=20)
        assert len(dropped) == 1, "one process died: only its own browser lost its connection"
        lost = dropped[0]
        kept = b if lost is a else a
        await spoken_turn(kept, question)  # the other process never noticed

        back = ParleyClient(two_processes, session_id=lost.session_id, session_key=lost.session_key)  # as the page does
        try:
            welcome = await back.connect()
            assert [m["role"] for m in welcome["history"]][:2] == ["user", "assistant"], "its conversation came back"
            await spoken_turn(back, question)
        finally:
            await back.close()
