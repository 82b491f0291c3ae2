"""The models' queue is fair and bounded: a user's flood waits behind itself, a full queue says
"busy, try again in N s" at once, and a caller that goes away takes no slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployments.fair import Busy, FairQueue
from deployments.llm import LLM, LLMError
from media.packet import OpusPacket
from parley.config import LLMConfig, ParleyConfig
from parley.engine.types import ChatMessage, SceneNote, Transcript, VideoSource, VisionInfo
from parley.ingress.server import IngressServer
from tests.support.client import ParleyClient
from tests.support.fake_openai import FakeOpenAI
from tests.support.network import free_port

QUESTION = [ChatMessage(role="user", content="What is the capital of France?")]
MODEL_S = 0.6  # each answer: 6 deltas, 0.1 s apart


async def hold(queue: FairQueue, user: str, log: list[str], release: asyncio.Event) -> None:
    async with queue.slot(user):
        log.append(user)
        await release.wait()


async def test_a_waiting_user_who_had_no_turn_goes_before_a_flood() -> None:
    queue, log = FairQueue(1, max_waiting=8, per_user_waiting=3), list[str]()
    gates = [asyncio.Event() for _ in range(4)]
    flood = [asyncio.create_task(hold(queue, "flooder", log, gates[i])) for i in range(3)]
    await asyncio.sleep(0)
    victim = asyncio.create_task(hold(queue, "victim", log, gates[3]))
    await asyncio.sleep(0)
    assert log == ["flooder"] and queue.waiting == 3
    gates[0].set()
    await asyncio.sleep(0.01)
    assert log == ["flooder", "victim"], "the victim waited for the running turn only"
    for gate in gates:
        gate.set()
    await asyncio.gather(*flood, victim)
    assert log == ["flooder", "victim", "flooder", "flooder"] and queue.holding == 0


async def test_a_full_queue_says_busy_at_once_with_when_to_retry() -> None:
    queue, log, release = FairQueue(1, max_waiting=2, per_user_waiting=1, typical_s=4.0), list[str](), asyncio.Event()
    tasks = [asyncio.create_task(hold(queue, user, log, release)) for user in ("a", "b", "c")]
    await asyncio.sleep(0)
    with pytest.raises(Busy, match=r"Parley is busy\. Try again in 12 s\.") as busy:
        await hold(queue, "d", log, release)
    assert busy.value.retry_after_s == 12  # a turn takes ~4 s; two wait ahead, then this one
    with pytest.raises(Busy, match="You have 1 questions waiting"):
        await hold(queue, "b", log, release)
    release.set()
    await asyncio.gather(*tasks)


async def test_a_waiter_whose_caller_went_away_takes_no_slot() -> None:
    queue, log, release = FairQueue(1), list[str](), asyncio.Event()
    first = asyncio.create_task(hold(queue, "a", log, release))
    await asyncio.sleep(0)
    gone = asyncio.create_task(hold(queue, "b", log, release))
    third = asyncio.create_task(hold(queue, "c", log, release))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    assert queue.waiting == 1
    release.set()
    await asyncio.gather(first, third)
    assert log == ["a", "c"] and queue.holding == 0 and queue.waiting == 0


@pytest.fixture
def slow_model(fake: FakeOpenAI) -> LLM:
    fake.reply = ["One", " two", " three", " four", " five", " six."]
    fake.delta_delay_s = MODEL_S / len(fake.reply)
    config = {"backend": "openai", "base_url": fake.base_url, "api_key_env": "PARLEY_TEST_KEY"}
    return LLM(LLMConfig.model_validate({**config, "queue": {"concurrent": 1, "max_waiting": 4, "waiting_per_user": 2}}))


async def answer(llm: LLM, user: str) -> float:
    began = time.monotonic()
    async for _ in llm.stream_reply(QUESTION, user=user):
        pass
    return time.monotonic() - began


async def test_a_flood_of_turns_delays_another_user_by_no_more_than_its_own_model_time(slow_model: LLM) -> None:
    alone = await answer(slow_model, "victim")
    flood = [asyncio.create_task(answer(slow_model, "flooder")) for _ in range(3)]
    while slow_model.generating == 0:
        await asyncio.sleep(0.01)
    victim = await answer(slow_model, "victim")
    assert not all(f.done() for f in flood)
    assert victim - alone <= alone + 0.2, f"alone {alone:.2f} s, behind a flood {victim:.2f} s"
    await asyncio.gather(*flood)

    flood = [asyncio.create_task(answer(slow_model, "flooder")) for _ in range(3)]
    await asyncio.sleep(0.05)
    began = time.monotonic()
    with pytest.raises(LLMError, match=r"You have 2 questions waiting for the model already\. Try again in \d+ s\."):
        await answer(slow_model, "flooder")
    assert time.monotonic() - began < 0.1, "refused at once, not after a wait"
    await asyncio.gather(*flood)
    assert slow_model.generating == 0 and slow_model.queue.waiting == 0


class FakeModelServices:
    """The real LLM deployment (on the OpenAI fake) behind the ingress; no speech."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        raise AssertionError("typed turns only")

    def stream_reply(self, messages: list[ChatMessage], *, user: str = "") -> AsyncIterator[str]:
        return self.llm.stream_reply(messages, user=user)

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[OpusPacket]:
        for _ in range(2):
            yield OpusPacket(data=b"\xfc\x01\x02", samples=960)

    async def read_ahead(self, messages: list[ChatMessage], *, user: str = "") -> None:
        return None

    async def describe(self, jpeg: bytes, source: VideoSource = "camera") -> SceneNote:
        raise AssertionError("no camera here")

    async def vision_info(self) -> VisionInfo | None:
        return None


async def typed_turn(client: ParleyClient, text: str) -> dict[str, Any]:
    answers = len(client.messages("assistant"))
    await client.sio.emit("text", {"text": text})
    done = await client.wait_for(
        lambda: [m for m in client.messages("assistant")[answers:] if m["state"] in ("done", "error")], timeout=30
    )
    return done[0]


async def test_through_the_ingress_a_users_sessions_flood_and_another_user_still_gets_a_prompt_answer(
    slow_model: LLM, tmp_path: Path
) -> None:
    config = ParleyConfig.model_validate({"server": {"port": free_port(), "state_dir": str(tmp_path)}})
    server = IngressServer(config, FakeModelServices(slow_model))
    await server.start()
    clients: list[ParleyClient] = []
    try:
        for address in ("127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3"):  # one user's three tabs, then another user
            client = ParleyClient(server.url, source_address=address)
            assert "session_id" in await client.connect(media=False)
            clients.append(client)
        *flooder, victim = clients
        began = time.monotonic()
        await typed_turn(victim, "Hello?")
        alone = time.monotonic() - began

        flood = [asyncio.create_task(typed_turn(c, "Tell me everything.")) for c in flooder]
        while slow_model.generating == 0:
            await asyncio.sleep(0.01)
        began = time.monotonic()
        answered = await typed_turn(victim, "And now?")
        behind_flood = time.monotonic() - began
        assert answered["state"] == "done"
        assert behind_flood - alone <= alone + 0.3, f"alone {alone:.2f} s, behind a flood {behind_flood:.2f} s"
        states = [m["state"] for m in await asyncio.gather(*flood)]
        assert states.count("done") == 3, states
    finally:
        for client in clients:
            await client.close()
        await server.stop()
