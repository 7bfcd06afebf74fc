"""Natural batching: concurrent callers share one round trip (group commit for writes).

A call that finds fewer than ``max_inflight`` batches running goes at once, alone:
no added latency when the server is quiet. While ``max_inflight`` batches are
running, new calls wait and leave together in the next batch (up to
``max_batch``) as soon as one finishes. Under load, one round trip, and for
writes one WAL flush, then serves many callers.

``run(items)`` does the work for a batch and returns one result per item, in
order; if it raises, every caller of that batch gets the exception. Results are
handed back in the order the calls arrived. A caller that stops waiting (its
client went away) does not stop its item: the batch goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Run = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class Batcher(Generic[T, R]):
    def __init__(self, run: Run[T, R], *, max_batch: int, max_inflight: int, name: str) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        self._run = run
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._dispatch()
        # A caller cancelled here cancels only its future: the batch goes on.
        return await future

    async def close(self) -> None:
        """Wait for the batches in flight (they may be committing)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _dispatch(self) -> None:
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._inflight += 1
            task = asyncio.create_task(self._execute(batch), name=self._name)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._inflight -= 1
            self._dispatch()
