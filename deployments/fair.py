"""A fair, bounded queue in front of a model: users take turns, and a full queue says when to retry.

Invariants:
- At most `slots` holders at once (a local model: 1, it runs one generation at a time).
- A freed slot goes to the oldest waiter of the waiting user who got a slot least recently (one
  who never had one first). One user's flood of requests waits behind itself: another user waits
  for the generations running now, not for the flood.
- At most `max_waiting` wait in all and `per_user_waiting` per user; one more raises `Busy` at
  once, with an estimate of when a slot frees, instead of a long silent wait.
- A waiter that is cancelled (its caller went away) leaves the queue and takes no slot.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Busy(RuntimeError):
    """The queue is full; `retry_after_s` is when a turn would likely get a slot."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FairQueue:
    def __init__(self, slots: int = 1, *, max_waiting: int = 8, per_user_waiting: int = 2, typical_s: float = 5.0) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.per_user_waiting = per_user_waiting
        self.holding = 0
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._served: OrderedDict[str, int] = OrderedDict()
        """When each user last got a slot (a count of slots given), newest last; bounded."""
        self._given = 0
        self._typical_s = typical_s
        """How long a holder holds its slot (a moving average of what they did)."""

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely moved enough for one more request."""
        return max(1, math.ceil(self._typical_s * (self.waiting + 1) / self.slots))

    @asynccontextmanager
    async def slot(self, user: str) -> AsyncIterator[None]:
        """Hold one slot for the body; raises Busy when the queue is full."""
        await self._acquire(user)
        began = time.monotonic()
        try:
            yield
        finally:
            self._typical_s = 0.8 * self._typical_s + 0.2 * (time.monotonic() - began)
            self._release()

    async def _acquire(self, user: str) -> None:
        if self.holding < self.slots and not self._waiting:
            self.holding += 1
            self._mark_served(user)
            return
        mine = self._waiting.get(user)
        if mine is not None and len(mine) >= self.per_user_waiting:
            raise Busy(
                f"You have {len(mine)} questions waiting for the model already. Try again in {self.retry_after_s()} s.",
                self.retry_after_s(),
            )
        if self.waiting >= self.max_waiting:
            raise Busy(f"Parley is busy. Try again in {self.retry_after_s()} s.", self.retry_after_s())
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(user, deque()).append(waiter)
        try:
            await waiter  # _release hands its slot over: holding stays counted
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as its caller went away: pass it on
            else:
                self._forget(user, waiter)
            raise

    def _forget(self, user: str, waiter: asyncio.Future[None]) -> None:
        queue = self._waiting.get(user)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiting[user]

    def _mark_served(self, user: str) -> None:
        self._given += 1
        self._served[user] = self._given
        self._served.move_to_end(user)
        while len(self._served) > 10_000:
            self._served.popitem(last=False)

    def _release(self) -> None:
        while self._waiting:
            user = min(self._waiting, key=lambda u: self._served.get(u, 0))
            queue = self._waiting[user]
            waiter = queue.popleft()
            if not queue:
                del self._waiting[user]
            if not waiter.done():
                self._mark_served(user)
                waiter.set_result(None)  # the slot passes straight to it: holding stays counted
                return
        self.holding -= 1
