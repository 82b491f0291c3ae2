"""The three model services a session talks to, as one protocol.

Invariant: a Session only ever sees this protocol. Behind Serve it is backed by deployment
handles (deployments/ingress.py); in tests and tools it can be backed by the plain deployment
classes in-process. Streaming methods are async iterators; closing one early cancels the work
behind it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import numpy as np

from media.packet import OpusPacket
from parley.engine.types import ChatMessage, Finish, SceneNote, Transcript, VideoSource, VisionInfo


class ServiceError(RuntimeError):
    """A model service failed; the message is meant for the user (the page shows it)."""


class Services(Protocol):
    async def transcribe(self, audio: np.ndarray) -> Transcript: ...

    def stream_reply(self, messages: list[ChatMessage], *, user: str = "") -> AsyncIterator[str | Finish]:
        """Text deltas, then (when the model said) why it stopped."""
        ...

    def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[OpusPacket]: ...

    async def read_ahead(self, messages: list[ChatMessage], *, user: str = "") -> None:
        """Let an idle local model read the start of the next prompt now (the history and a scene note,
        while the user is still talking or an answer plays), so the turn's request reads only the
        words. A hint: it may do nothing, and a caller ignores its failures."""
        ...

    async def describe(self, jpeg: bytes, source: VideoSource = "camera") -> SceneNote:
        """The scene note of one frame (for a text-only model); ServiceError when there is no vision service."""
        ...

    async def vision_info(self) -> VisionInfo | None:
        """What the vision service finds and costs; None when there is none."""
        ...


NO_VISION = "Parley has no vision service here, so it cannot see the camera."


class LocalServices:
    """Services backed by deployment objects living in this process (no Ray)."""

    def __init__(self, asr: Any, llm: Any, tts: Any, vision: Any = None) -> None:
        self._asr, self._llm, self._tts, self._vision = asr, llm, tts, vision

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        result: Transcript = await self._asr.transcribe(audio)
        return result

    def stream_reply(self, messages: list[ChatMessage], *, user: str = "") -> AsyncIterator[str | Finish]:
        return self._llm.stream_reply(messages, user=user, finish=True)  # type: ignore[no-any-return]

    def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[OpusPacket]:
        return self._tts.synthesize(text, voice)  # type: ignore[no-any-return]

    async def read_ahead(self, messages: list[ChatMessage], *, user: str = "") -> None:
        await self._llm.read_ahead(messages, user=user)

    async def describe(self, jpeg: bytes, source: VideoSource = "camera") -> SceneNote:
        if self._vision is None:
            raise ServiceError(NO_VISION)
        note: SceneNote = await self._vision.describe(jpeg, source)
        return note

    async def vision_info(self) -> VisionInfo | None:
        if self._vision is None:
            return None
        info: VisionInfo = await self._vision.info()
        return info
