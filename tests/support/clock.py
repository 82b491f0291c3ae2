"""The tests' one fake clock: time that moves only when something sleeps on it or the test moves it.

Invariant: `clock()` returns `clock.now`, which never goes back on its own. `await clock.sleep(s)`
(an async sleep: PacingTrack, SenderClock) and `clock.advance(s)` (a blocking one:
wait_until_running) move it `s` on, running in time order, at their own times, the actions
scheduled with `at` up to there; every sleep asked for is kept in `sleeps`. An async sleep yields
to the event loop once, as a real one would. Made with `gated=True`, each async sleep first sets
`sleeping` and waits for the test to set `gate`, so a test can act in the middle of a wait.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable


class FakeClock:
    def __init__(self, now: float = 0.0, *, gated: bool = False) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.sleeping = asyncio.Event()
        """Set once an async sleep has begun."""
        self.gate = asyncio.Event()
        """Async sleeps wait for it (set from the start unless gated)."""
        if not gated:
            self.gate.set()
        self._due: list[tuple[float, int, Callable[..., object]]] = []
        self._count = 0

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[..., object]) -> None:
        """Run `action` when the clock reaches `when` (actions due at the same time run in the order given)."""
        heapq.heappush(self._due, (when, self._count, action))
        self._count += 1

    def run_until(self, when: float) -> None:
        """Move to `when`, running what is due on the way, each at its own time."""
        while self._due and self._due[0][0] <= when:
            at, _, action = heapq.heappop(self._due)
            self.now = max(self.now, at)
            action()
        self.now = max(self.now, when)

    def advance(self, seconds: float) -> None:
        """A blocking sleep."""
        self.sleeps.append(seconds)
        self.run_until(self.now + seconds)

    async def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        await self.gate.wait()
        self.advance(seconds)
        await asyncio.sleep(0)
