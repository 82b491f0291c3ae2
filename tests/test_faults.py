"""A model replica dies in the middle of a turn: the page says so clearly, the session goes on.

Each test kills one replica of the session's "parley" app with `ray.kill`, checks what the page
sees, waits until Serve has started its replacement (health checks every
`serve.health_check_period_s`), and checks that the next turn works. The app is whole again when
each test ends, so the tests after it are not hurt.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import ray
from ray.serve.context import _get_global_client

from tests.support.client import ParleyClient
from tests.support.network import loopback_only
from tests.support.speech import speak

pytestmark = pytest.mark.serve

log = logging.getLogger(__name__)

APP = "parley"
REPLACE_LIMIT_S = 30.0

needs_loopback = pytest.mark.skipif(not loopback_only(), reason="WebRTC tests run in a loopback-only network namespace")


def replicas(deployment: str) -> list[dict]:
    """The deployment's replicas as Serve's controller sees them now (actor_name, state, ...).

    serve.status() only counts replicas, and counts a killed one as running until its health check
    fails; the per-replica details (what the dashboard shows) name each replica's actor.
    """
    controller = _get_global_client()
    assert controller is not None, "Serve is not running"
    details = controller.get_serve_details()
    return list(details["applications"][APP]["deployments"][deployment]["replicas"])


def replica(deployment: str) -> tuple[str, ray.actor.ActorHandle]:
    """The deployment's only replica: its actor name and handle (looked up ahead of the kill)."""
    found = replicas(deployment)
    assert len(found) == 1 and found[0]["state"] == "RUNNING", f"expected one running {deployment} replica: {found}"
    name = found[0]["actor_name"]
    return name, ray.get_actor(name, namespace="serve")


ACCEPTED_S = 0.03
"""How long after a replica starts a call its caller surely knows it was accepted (a few ms here).

Serve fails only calls whose acceptance reached the caller: a call to a replica that dies before
that, like a call made after the kill, waits for the replacement and then succeeds."""


async def kill_mid_call(actor: ray.actor.ActorHandle, timeout: float = 30.0) -> float:
    """Kill the replica while it is working on an accepted call; returns the monotonic time of the kill."""
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"the replica ran no call long enough to be killed in within {timeout:g} s"
        if await actor.get_num_ongoing_requests.remote():
            await asyncio.sleep(ACCEPTED_S)
            if await actor.get_num_ongoing_requests.remote():
                ray.kill(actor, no_restart=True)
                return time.monotonic()
        await asyncio.sleep(0.005)  # the replica answers these in its own thread, which takes the GIL


def replaced(deployment: str, killed: str) -> bool:
    """Serve runs one replica of the deployment again, and it is not the killed one."""
    running = [r["actor_name"] for r in replicas(deployment) if r["state"] == "RUNNING"]
    return running != [] and killed not in running


async def wait_replaced(deployment: str, killed: str, since: float) -> float:
    """Seconds from `since` until Serve runs a replacement for the killed replica."""
    deadline = since + REPLACE_LIMIT_S
    while not await asyncio.to_thread(replaced, deployment, killed):
        assert time.monotonic() < deadline, f"no new {deployment} replica within {REPLACE_LIMIT_S:g} s of the kill"
        await asyncio.sleep(0.1)
    return time.monotonic() - since


def assistant_in(client: ParleyClient, *states: str) -> list[dict]:
    return [m for m in client.messages("assistant") if m["state"] in states]


async def next_turn_works(client: ParleyClient) -> dict:
    """A typed turn after the fault ends 'done' with text."""
    before = len(client.messages("assistant"))

    def finished() -> list[dict]:
        return [m for m in client.messages("assistant")[before:] if m["state"] != "streaming"]

    await client.sio.emit("text", {"text": "Say hello."})
    answer = (await client.wait_for(finished, timeout=60))[0]
    assert answer["state"] == "done" and answer["text"].strip(), f"the turn after the fault: {answer}"
    return answer


async def test_llm_replica_dies_mid_answer(serve_app) -> None:
    client = ParleyClient(serve_app.url)
    name, actor = replica("LLM")
    killed_at: float | None = None
    try:
        await client.connect(media=False)
        await client.sio.emit("text", {"text": "Tell me a very long story about a dragon who learns to cook."})
        await client.wait_for(lambda: client.of("delta"), timeout=60)
        ray.kill(actor, no_restart=True)
        killed_at = time.monotonic()

        failed = await client.wait_for(lambda: assistant_in(client, "error", "done"), timeout=30)
        assert failed[0]["state"] == "error", f"the answer finished before the kill landed: {failed[0]}"
        assert failed[0]["error"] == "The language model service stopped in the middle of this turn."
        assert failed[0]["text"].strip(), "the text that streamed before the failure stays"
        assert client.sio.connected

        replaced_s = await wait_replaced("LLM", name, killed_at)
        await next_turn_works(client)
        log.warning(
            "LLM replica replaced %.1f s after the kill; next turn done %.1f s after it", replaced_s, time.monotonic() - killed_at
        )
    finally:
        if killed_at is not None:
            await wait_replaced("LLM", name, killed_at)
        await client.close()


@needs_loopback
async def test_tts_replica_dies_mid_answer(serve_app) -> None:
    client = ParleyClient(serve_app.url)
    name, actor = replica("TTS")
    killed_at: float | None = None
    try:
        await client.connect()
        await client.sio.emit("text", {"text": "Tell me a very long story about a dragon who learns to cook."})
        killed_at = await kill_mid_call(actor)

        answer = (await client.wait_for(lambda: assistant_in(client, "done", "error"), timeout=30))[0]
        assert answer["state"] == "done" and answer["text"].strip(), f"the text is unaffected: {answer}"
        notices = await client.wait_for(lambda: [n for n in client.of("notice") if "speech synthesis" in n["text"].lower()], 30)
        assert "stopped in the middle of this turn" in notices[0]["text"], notices[0]
        assert client.sio.connected

        replaced_s = await wait_replaced("TTS", name, killed_at)
        answer = await next_turn_works(client)  # interrupts what is left of the story
        metrics = await client.wait_for(lambda: [m for m in client.of("metrics") if m["id"] == answer["id"]], timeout=60)
        assert metrics[0]["voice_to_voice"] is not None, "the next turn's speech left the server"
        began = next(at for at, event, data in client.events if event == "message" and data["id"] == answer["id"])
        assert client.heard.first_sound_after(began + 0.5), "the next turn was heard (after the story's last packets)"
        log.warning("TTS replica replaced %.1f s after the kill", replaced_s)
    finally:
        if killed_at is not None:
            await wait_replaced("TTS", name, killed_at)
        await client.close()


@needs_loopback
async def test_asr_replica_dies_during_a_spoken_turn(serve_app) -> None:
    client = ParleyClient(serve_app.url)
    name, actor = replica("ASR")
    question = speak("What is the capital of France?", rate=48000)
    killed_at: float | None = None
    try:
        await client.connect()
        # ASR starts at the pause after the question, while the key is still held: watch from now
        killing = asyncio.create_task(kill_mid_call(actor))
        await client.push_to_talk(question)
        killed_at = await killing

        notice = await client.wait_for(lambda: [n for n in client.of("notice") if "speech recognition" in n["text"].lower()], 30)
        assert notice[0]["text"].startswith("Speech recognition failed"), notice[0]
        assert "stopped in the middle of this turn" in notice[0]["text"], notice[0]
        assert not client.messages("user"), "nothing was transcribed, so nothing reached the LLM"
        assert client.sio.connected

        replaced_s = await wait_replaced("ASR", name, killed_at)
        await client.push_to_talk(question)
        user = await client.wait_for(lambda: client.messages("user"), timeout=30)
        assert "france" in user[0]["text"].lower(), user
        await client.wait_for(lambda: assistant_in(client, "done"), timeout=60)
        log.warning("ASR replica replaced %.1f s after the kill", replaced_s)
    finally:
        if killed_at is not None:
            await wait_replaced("ASR", name, killed_at)
        await client.close()
