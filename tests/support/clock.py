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


class SteppedClock:
    """Time that moves only when the test says so: `await clock.advance(s)`.

    Invariant: `clock()` returns `clock.now`, which changes only inside `advance` and never goes
    back. `await clock.sleep(s)` begun at `t` parks its caller until `now` reaches `t + s`; `advance`
    wakes the sleepers due by its target in time order (ties: in the order they began), each at
    its own time (`now` is its wake time while it runs), and lets the event loop run `spins` times
    after each, so what a woken task does at once (act, report, sleep again) happens at that time:
    a sleep begun there is honoured too if it is due before the target. A cancelled sleeper is never
    woken and does not count as `pending`.
    """

    def __init__(self, now: float = 0.0, *, spins: int = 10) -> None:
        self.now = now
        self.spins = spins
        """Turns of the event loop given to woken tasks (and before moving at all)."""
        self.woken: list[float] = []
        """The wake time of each sleeper woken, in order."""
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0

    def __call__(self) -> float:
        return self.now

    @property
    def pending(self) -> int:
        """Sleepers still parked (not woken, not cancelled)."""
        return sum(not future.done() for _, _, future in self._sleepers)

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), self._count, future))
        self._count += 1
        await future

    async def advance(self, seconds: float) -> None:
        """Move `seconds` on, waking what is due on the way, each at its own time."""
        if seconds < 0:
            raise ValueError(f"time does not go back ({seconds} s)")
        target = self.now + seconds
        await self._spin()  # tasks started just now begin their sleeps at the current time
        while self._sleepers and self._sleepers[0][0] <= target:
            at, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue  # cancelled
            self.now = max(self.now, at)
            self.woken.append(at)
            future.set_result(None)
            await self._spin()
        self.now = max(self.now, target)

    async def _spin(self) -> None:
        for _ in range(self.spins):
            await asyncio.sleep(0)
