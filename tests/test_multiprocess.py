"""Several ingress processes on one node, sharing one port: each browser's signalling and media
meet in one process, a process that dies takes only its own sessions, and they come back, with
their conversations, from the store the processes share (Redis here, as on a cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import ray
from ray import serve

from tests.support.client import ParleyClient
from tests.support.network import free_port, loopback_only
from tests.support.speech import speak, trim

pytestmark = [
    pytest.mark.serve,
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)"),
]

APP = "parley-multi"


@pytest.fixture(scope="module")
def two_processes(serve_app, redis_url: str) -> Iterator[str]:
    """Two ingress replicas on this node, both bound to one port, calling the session app's models,
    keeping conversations in Redis."""
    from deployments.ingress import Ingress
    from parley.config import ParleyConfig

    config = ParleyConfig.model_validate(
        {
            "server": {"port": free_port(), "store": redis_url},
            "webrtc": {"ice_addresses": ["127.0.0.1"]},
            "serve": {"ingress": {"per_node": 2}},
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


def ingress_names() -> list[str]:
    """The actor names of the app's two ingress processes."""
    names = [n["name"] for n in ray.util.list_named_actors(all_namespaces=True) if n["name"].startswith(f"SERVE_REPLICA::{APP}#")]
    assert len(names) == 2
    return sorted(names)


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

        ray.kill(ray.get_actor(ingress_names()[0], namespace="serve"), no_restart=True)
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


async def test_ingresses_killed_mid_answer_give_the_conversation_back_with_the_cut_answer_marked_error(
    two_processes: str, question: np.ndarray
) -> None:
    await listening(two_processes, 2)
    client = ParleyClient(two_processes)
    back: ParleyClient | None = None
    try:
        await client.connect()
        await spoken_turn(client, question)
        answers = len(client.messages("assistant"))
        await client.sio.emit("text", {"text": "Tell me a long story about a dragon who learns to sing."})
        await client.wait_for(lambda: [m for m in client.messages("assistant")[answers:] if m["text"]], timeout=60)
        llm = serve.get_deployment_handle("LLM", app_name="parley")
        abandoned = (await llm.load.remote())["abandoned"]
        for name in ingress_names():  # as SIGKILL: both processes end, one of them mid-answer
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        killed = asyncio.get_running_loop().time()
        await client.wait_for(lambda: not client.sio.connected, timeout=20)
        assert client.messages("assistant")[answers]["state"] == "streaming", "the kill landed while the answer streamed"
        while (load := await llm.load.remote())["generating"]:
            assert asyncio.get_running_loop().time() - killed < 10, "the LLM still generates for a dead ingress"
            await asyncio.sleep(0.2)
        assert load["abandoned"] == abandoned + 1, "the answer was stopped because its caller died, not finished"

        await listening(two_processes, 1)  # Serve starts new processes; the old ones' memory is gone
        back = ParleyClient(two_processes, session_id=client.session_id, session_key=client.session_key)
        welcome = await back.connect()
        history = [(m["role"], m["state"]) for m in welcome["history"]]
        # (the first answer may have been cut short by the next question: interrupted)
        assert [h[0] for h in history] == ["user", "assistant", "user", "assistant"], history
        assert history[1][1] in ("done", "interrupted"), history
        assert history[3][1] == "error", "the conversation is back from Redis, the answer its process died in marked error"
        await spoken_turn(back, question)
    finally:
        for c in (client, back):
            if c is not None:
                await c.close()


async def listening(url: str, processes: int, timeout: float = 90.0) -> None:
    """Wait until `processes` different ingress processes answer on the port."""
    import aiohttp

    seen: set[str] = set()
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:  # a new connection each
        while len(seen) < processes:
            assert asyncio.get_running_loop().time() < deadline, f"{len(seen)} of {processes} ingress processes answered"
            try:
                async with http.get(url + "healthz", timeout=aiohttp.ClientTimeout(total=2)) as reply:
                    seen.add((await reply.json())["ingress"])
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5)
