"""Group commit for sends: concurrent appends share one round trip and one commit.

A send that finds no batch in flight goes at once, alone: no added latency when
the server is quiet. While ``max_inflight`` batches are in flight, new sends wait
and leave together with the next batch (up to ``max_batch``), as soon as one
finishes. Under load, one round trip and one WAL flush then carry many messages,
which is where the database's share of a send goes down.

Results are handed back in the order the sends arrived, so the callers resume in
that order and publish each thread's messages in seq order. A caller that stops
waiting (its client went away) does not stop its append: the message is stored
and a retry finds it (``duplicate``).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from teleconsult.messaging.message_store import Append, Outcome, append_batch

logger = logging.getLogger(__name__)


class Appender:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int, max_inflight: int) -> None:
        if max_batch < 1 or max_inflight < 1:
            raise ValueError("max_batch and max_inflight must be at least 1")
        self._pool = pool
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._pending: list[tuple[Append, asyncio.Future[Outcome]]] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.appended = 0

    async def append(self, item: Append) -> Outcome:
        """The item's result, or the domain error that refused it; raises on infrastructure."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._dispatch()
        # A caller cancelled here cancels only its future: the batch goes on.
        return await future

    async def close(self) -> None:
        """Wait for the batches in flight (they are committing)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _dispatch(self) -> None:
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._inflight += 1
            task = asyncio.create_task(self._run(batch), name="chat-append-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Append, asyncio.Future[Outcome]]]) -> None:
        try:
            async with self._pool.acquire() as conn:
                outcomes = await append_batch(conn, [item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self.batches += 1
            self.appended += len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        finally:
            self._inflight -= 1
            self._dispatch()
