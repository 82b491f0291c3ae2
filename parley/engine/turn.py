"""One user turn as one object: from the first sound (or a typed message) to its answer played.

A `Turn` holds what belongs to one turn and nothing else: the utterance being said (none for a
typed message), the camera frame and its scene note, the speculation started at a pause, its
delivery (the user's words as the history keeps them, the reply, the turn's times and stage
metrics) and the hold (speech over its answer). Its `phase` moves one way: hearing → thinking →
speaking → over.

The turn state the page sees (`page_state`) is derived from the coordinator's two turns in this
one place: it emits it whenever it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import av

from parley.engine.messages import Entry
from parley.engine.reply import Reply
from parley.engine.types import SceneNote
from parley.engine.utterance import Utterance
from parley.protocol import TurnState

if TYPE_CHECKING:
    from parley.engine.delivery import Delivery
    from parley.engine.hold import Hold

Phase = Literal["hearing", "thinking", "speaking", "over"]


@dataclass
class Speculation:
    """The transcript up to `until` and the reply started on it, before the turn is confirmed."""

    until: int
    transcript: asyncio.Task[str]
    """The words up to `until` (the turn judge and the hold read them too)."""
    began: float
    """When it started, on the session's clock."""
    reply: asyncio.Task[tuple[Entry, Reply, float | None] | None] | None = None
    """The user's entry and the reply started on the words, once they came (None: none is wanted)."""

    async def cancel(self) -> None:
        """Drop it: its ASR call and its reply (if one started) are cancelled."""
        self.transcript.cancel()
        if self.reply is None:
            return
        self.reply.cancel()
        result: tuple[Entry, Reply, float | None] | None = None
        with contextlib.suppress(asyncio.CancelledError, Exception):
            result = await self.reply
        if result is not None:
            await result[1].stop()


@dataclass(eq=False)
class Turn:
    """One user turn and its answer."""

    utterance: Utterance | None
    """What the user is saying (None: a typed message)."""
    frame: av.VideoFrame | None = None
    """The camera frame when the turn began (the one its scene note or image is made of)."""
    scene: asyncio.Task[SceneNote | None] | None = None
    """Its scene note, being made while the user speaks (None: no note is wanted, or not yet)."""
    look_later: bool = False
    """Its scene note waits until it is known to be a turn (speech over an answer is mostly "mm-hmm")."""
    paid: bool = False
    """It was taken from the user's budget when it began (a key press, or a scene note started)."""
    speculation: Speculation | None = None
    phase: Phase = "hearing"
    ended: bool = False
    """Its utterance is over (the key came up, or the end of turn): it is being decided."""
    delivery: Delivery | None = None
    """Its answer being given: the user's entry, the reply, the turn's times and stage metrics."""
    hold: Hold | None = None
    """Speech over its answer, until settled."""
    task: asyncio.Task[None] | None = None
    """The work from its end to its answer played."""
    on_first_audio: Callable[[], None] = lambda: None
    """Told when its answer's first audio leaves (the session posts `FirstAudio`)."""

    @property
    def reply(self) -> Reply | None:
        return None if self.delivery is None else self.delivery.reply

    @property
    def held(self) -> bool:
        """Its answer's audio is stopped now because the user speaks over it."""
        return self.hold is not None and self.hold.held

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def drop(self) -> None:
        """It is over without an answer: cancel everything still running for it."""
        self.phase = "over"
        if self.speculation is not None:
            await self.speculation.cancel()
            self.speculation = None
        if self.utterance is not None:
            self.utterance.drop()
        if self.scene is not None:
            self.scene.cancel()


def page_state(hearing: Turn | None, answering: Turn | None, *, hands_free: bool) -> TurnState:
    """The turn state the page shows: what the user hears from Parley comes first, unless the user
    is speaking over it (the answer is held, or has not begun to sound)."""
    if answering is not None and answering.phase in ("thinking", "speaking"):
        if hearing is not None and (answering.held or answering.phase == "thinking"):
            return "hearing"
        return answering.phase
    if hearing is not None:
        return "hearing"
    return "listening" if hands_free else "idle"
