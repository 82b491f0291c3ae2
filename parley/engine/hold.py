"""Speech over an answer (hands-free): the answer held at once, then settled exactly once.

A `Hold` is opened by the coordinator (`parley.engine.floor.open_hold`) when the user's speech
over an answer has lasted long enough. It applies `parley.engine.overlap.decide` to what is heard,
at each moment it is read, and reports upward through its own `Report` (the coordinator turns it
into a `Settled` event): it never touches the session, the output or the page itself.

Invariants:
- A hold is settled exactly once: `interrupt` (the speech becomes the turn) or `resume` (the
  utterance was no turn; the answer goes on from the start of its sentence if it was still held).
  Before that, `play_on` (no words at a pause, or the answer's own words) lets the answer play
  from where it stopped while the utterance goes on, and speech again holds it again (`rehold`).
- While the speech goes on, what has been said so far is read every `PEEK_EVERY_S` (at most
  `PEEKS` times): a clear "wait" or "stop" interrupts then, not only once the speech pauses.
- A hold not settled within `HOLD_LIMIT_S` (its transcript never came) interrupts.
- Every timer runs on the session's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from parley.engine.clock import Clock
from parley.engine.overlap import NO_WORDS_GRACE_S, Action, Decision, Overheard, decide
from parley.engine.utterance import Utterance

PEEK_EVERY_S = 0.35
PEEKS = 3

HOLD_LIMIT_S = 4.0
"""A hold not settled by then (the transcript never came) becomes an interruption."""


class Report(Protocol):
    """How a hold tells its coordinator what the speech came to (`interrupt`, `resume` or `play_on`)."""

    def __call__(self, hold: Hold, action: Action, why: str) -> None: ...


Peek = Callable[[], Awaitable[Overheard | None]]
"""Reads the speech so far (`moment="peek"`); None once it is not going on any more."""


class Hold:
    """An answer held because the user spoke over it."""

    def __init__(
        self,
        utterance: Utterance | None,
        *,
        clock: Clock,
        report: Report,
        peek: Peek,
        paused_at: Callable[[], int | None],
    ) -> None:
        self.utterance = utterance
        """The speech over the answer (None: it began before the utterance was known)."""
        self.held = True
        """Whether the answer's audio is stopped now (`play_on` lets it play while the utterance goes on)."""
        self.settled = False
        self._clock = clock
        self._report = report
        self._peek = peek
        self._paused_at = paused_at
        self._timers: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Begin its timers: the limit and the reading of the speech while it goes on."""
        self._spawn(self._limit())
        self._spawn(self._peeking())

    def over(self, utterance: Utterance | None) -> bool:
        """Whether this utterance is the speech over the held answer."""
        return not self.settled and self.utterance is utterance

    def rehold(self) -> bool:
        """Speech again after `play_on`: the answer is held again. False if it was held already."""
        if self.held or self.settled:
            return False
        self.held = True
        return True

    def heard(self, heard: Overheard) -> Decision:
        """What the speech is known to be now: decide, and report it (a `play_on_if_quiet` is
        reported once the pause has lasted `NO_WORDS_GRACE_S` more)."""
        decision = decide(heard)
        if self.settled:
            return decision
        if decision.action in ("interrupt", "resume"):
            self._settle(decision.action, decision.why)
        elif decision.action == "play_on":
            self._play_on(decision.why)
        elif decision.action == "play_on_if_quiet":
            self._spawn(self._play_on_if_quiet(self._paused_at(), decision.why))
        return decision

    def close(self) -> None:
        """The answer ended or was interrupted: nothing is held any more."""
        self.settled = True
        for task in self._timers:
            task.cancel()

    def _settle(self, action: Action, why: str) -> None:
        if self.settled:
            return
        self.settled = True
        for task in self._timers:
            if task is not asyncio.current_task():
                task.cancel()
        self._report(self, action, why)

    def _play_on(self, why: str) -> None:
        if self.settled or not self.held:
            return
        self.held = False
        self._report(self, "play_on", why)

    async def _play_on_if_quiet(self, paused_at: int | None, why: str) -> None:
        await self._clock.sleep(NO_WORDS_GRACE_S)
        if paused_at is not None and self._paused_at() == paused_at:
            self._play_on(why)

    async def _limit(self) -> None:
        await self._clock.sleep(HOLD_LIMIT_S)
        if self.held:
            self._settle("interrupt", f"not settled within {HOLD_LIMIT_S:g} s")

    async def _peeking(self) -> None:
        for _ in range(PEEKS):
            await self._clock.sleep(PEEK_EVERY_S)
            if self.settled or not self.held:
                return
            try:
                heard = await self._peek()
            except Exception:
                return  # the utterance's own transcript settles it
            if heard is None:
                return
            if not self.settled and decide(heard).action == "interrupt":
                self._settle("interrupt", decide(heard).why)
                return

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)
