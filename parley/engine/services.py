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
from parley.engine.types import ChatMessage, Finish, Transcript


class ServiceError(RuntimeError):
    """A model service failed; the message is meant for the user (the page shows it)."""


class Services(Protocol):
    async def transcribe(self, audio: np.ndarray) -> Transcript: ...

    def stream_reply(self, messages: list[ChatMessage], *, user: str = "") -> AsyncIterator[str | Finish]:
        """Text deltas, then (when the model said) why it stopped."""
        ...

    def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[OpusPacket]: ...


class LocalServices:
    """Services backed by deployment objects living in this process (no Ray)."""

    def __init__(self, asr: Any, llm: Any, tts: Any) -> None:
        self._asr, self._llm, self._tts = asr, llm, tts

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        result: Transcript = await self._asr.transcribe(audio)
        return result

    def stream_reply(self, messages: list[ChatMessage], *, user: str = "") -> AsyncIterator[str | Finish]:
        return self._llm.stream_reply(messages, user=user, finish=True)  # type: ignore[no-any-return]

    def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[OpusPacket]:
        return self._tts.synthesize(text, voice)  # type: ignore[no-any-return]
