"""Batching concurrent calls for an engine that runs one batch at a time, without holding a lone one.

Invariant: an idle engine takes what is waiting at once (after `wait_s`, 0 by default, so a lone
call never waits for company); calls that arrive while a batch runs form the next batch, up to
`max_size`. So under load batches fill by themselves, and at rest a call costs no wait. Each caller
gets its own result, or its batch's exception; a caller that goes away before its batch starts is
left out of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """`await batcher(item)` -> its result, computed in a batch by `run(items) -> results`."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], *, max_size: int, wait_s: float = 0.0) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._run = run
        self.max_size = max_size
        self.wait_s = wait_s
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._arrived.set()
        return await future

    async def _work(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if self.wait_s > 0 and len(self._waiting) < self.max_size:
                await asyncio.sleep(self.wait_s)
            while batch := self._take():
                await self._run_batch(batch)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        self._waiting = [(item, f) for item, f in self._waiting if not f.done()]  # callers that left
        batch, self._waiting = self._waiting[: self.max_size], self._waiting[self.max_size :]
        return batch

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
