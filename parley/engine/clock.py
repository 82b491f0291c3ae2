"""The engine's one clock: every time stamp, sleep and deadline of a session goes through it.

Invariant: a session's code never calls `time.monotonic`, `asyncio.sleep`, `asyncio.timeout` or
`asyncio.wait_for` for its own timing; it asks the session's `Clock` (the parts that take a plain
`clock` callable get the same one), so a test can drive holds, resumes, releases and judged pauses
on fake time (`tests/support/clock.py`). The one exception is the store's writer
(`parley.engine.messages.StoreQueue`): one per process, on a thread of its own, it keeps its own
waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Now, in seconds (monotonic), and a sleep on the same time line."""

    def __call__(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: `time.monotonic` (the event loop's own time base) and `asyncio.sleep`."""

    def __call__(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def within(clock: Clock, seconds: float, work: Awaitable[T]) -> T:
    """`work`'s result, or TimeoutError (and `work` cancelled) once `seconds` have passed on `clock`.
    Wrap `work` in `asyncio.shield` to let it go on after the timeout."""
    task = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(clock.sleep(max(0.0, seconds)))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        timer.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise TimeoutError
