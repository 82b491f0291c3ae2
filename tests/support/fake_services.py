"""Fakes for the engine, in LiveKit's fake_*.py style: scripted services and a page that records.

The scripted services replay a timeline (a delay before each item), so tests assert what the page
would see, in order, without depending on model speed. `make_session` builds a Session on them
with a track on the fake clock, which `pump` plays as fast as the clock allows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np

from media.packet import OpusPacket
from media.track import PacingTrack
from parley.config import ParleyConfig
from parley.engine.session import Session
from parley.engine.turnmodel import TurnJudge
from parley.engine.types import ChatMessage, SceneNote, Transcript, VideoSource, VisionInfo
from parley.policy import session_settings
from tests.support.clock import FakeClock


class ScriptedServices:
    """Services that answer from a script: words with delays, packets per sentence."""

    def __init__(
        self, reply: list[str], *, delta_delay: float = 0.0, transcript: str = "hello there", fail_after: int | None = None
    ):
        self.reply = reply
        self.delta_delay = delta_delay
        self.transcript = transcript
        self.fail_after = fail_after
        self.requests: list[list[ChatMessage]] = []
        self.spoken: list[str] = []
        self.transcribed = 0
        self.heard_s: list[float] = []
        """The length of each recording transcribed."""
        self.closed_early = False
        self.cancelled = 0
        """LLM streams closed before their end."""
        self.packets = 3
        """Packets of 20 ms per spoken sentence."""
        self.scene = "a dog, a bicycle"
        """The scene note every frame gets."""
        self.scene_delay = 0.0
        self.described: list[tuple[bytes, str]] = []
        """The frames described (JPEG bytes, source)."""
        self.read_ahead_prompts: list[list[ChatMessage]] = []
        """The prompt starts the model was asked to read ahead."""
        self.then: list[list[str]] = []
        """Scripts for the next requests, one each, in order; `reply` once they run out."""

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        self.transcribed += 1
        self.heard_s.append(len(audio) / 16000)
        return Transcript(text=self.transcript, audio_s=len(audio) / 16000)

    async def stream_reply(self, messages: list[ChatMessage], *, user: str = "") -> AsyncIterator[str]:
        self.requests.append(messages)
        script = self.then.pop(0) if self.then else self.reply
        finished = False
        try:
            for i, delta in enumerate(script):
                if self.fail_after is not None and i == self.fail_after:
                    raise RuntimeError("backend went away")
                await asyncio.sleep(self.delta_delay)
                yield delta
            finished = True
        finally:
            self.closed_early = not finished
            self.cancelled += not finished

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[OpusPacket]:
        self.spoken.append(text)
        for _ in range(self.packets):
            yield OpusPacket(data=b"\xfc\x01\x02", samples=960)

    async def read_ahead(self, messages: list[ChatMessage], *, user: str = "") -> None:
        self.read_ahead_prompts.append(messages)

    async def describe(self, jpeg: bytes, source: VideoSource = "camera") -> SceneNote:
        self.described.append((jpeg, source))
        await asyncio.sleep(self.scene_delay)
        return SceneNote(text=self.scene, source=source)

    async def vision_info(self) -> VisionInfo | None:
        return VisionInfo(finds=["objects"])


class Page:
    """Collects what the session emits, as the page would receive it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, event: str, data: dict[str, Any]) -> None:
        self.events.append((event, data))

    def of(self, name: str) -> list[dict[str, Any]]:
        return [d for n, d in self.events if n == name]


def frames(audio_48k: np.ndarray, *, stereo: bool = True) -> list[av.AudioFrame]:
    """Float audio at 48 kHz as the 20 ms s16 frames aiortc decodes from a browser."""
    pcm = (np.clip(audio_48k, -1, 1) * 32767).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % 960, np.int16)])
    out = []
    for i in range(0, len(pcm), 960):
        chunk = pcm[i : i + 960]
        data = np.repeat(chunk, 2) if stereo else chunk
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="stereo" if stereo else "mono")
        frame.sample_rate = 48000
        out.append(frame)
    return out


async def pump(track: PacingTrack, stop: asyncio.Event) -> None:
    """Stands in for aiortc's sender: pulls packets as fast as the (instant) clock allows."""
    while not stop.is_set():
        await track.recv()
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def playing(track: PacingTrack) -> AsyncIterator[None]:
    """The track played (as fast as the fake clock goes) while the block runs."""
    stop = asyncio.Event()
    task = asyncio.create_task(pump(track, stop))
    try:
        yield
    finally:
        stop.set()
        await task


def make_session(
    services: ScriptedServices,
    *,
    llm: dict[str, Any] | None = None,
    prompt: dict[str, Any] | None = None,
    turn: dict[str, Any] | None = None,
    turn_judge: TurnJudge | None = None,
    vision: dict[str, Any] | None = None,
    **limits: Any,
) -> tuple[Session, Page, PacingTrack]:
    """A session on scripted services. By default its model is a text-only endpoint (no scene notes,
    its words sent as they are); `prompt` {"vision": True} makes it a vision one (frames as images),
    `vision` {"enabled": True} the local model with scene notes."""
    if vision is None:
        llm = {"backend": "openai"} | (llm or {})
        prompt = {"vision": False} | (prompt or {})
    sections = {"limits": limits, "llm": llm, "prompt": prompt, "turn": turn, "vision": vision}
    config = ParleyConfig.model_validate({name: given or {} for name, given in sections.items()})
    session = Session("s" * 12, session_settings(config), services, turn_judge=turn_judge)
    page = Page()
    session.attach(page)
    clock = FakeClock()
    track = PacingTrack(clock=clock, sleep=clock.sleep)
    session.connect_output(track)
    return session, page, track


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)
