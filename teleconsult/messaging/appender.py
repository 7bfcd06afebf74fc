"""Group commit for sends: concurrent appends share one round trip and one commit.

A :class:`~teleconsult.core.batching.Batcher` over ``message_store.append_batch``:
a send that finds no batch in flight goes at once, alone; under load, sends leave
together, one round trip and one WAL flush for many messages. Results come back
in the order the sends arrived, so the callers resume in that order and publish
each thread's messages in seq order. A caller that stops waiting (its client
went away) does not stop its append: the message is stored and a retry finds it
(``duplicate``).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from teleconsult.core.batching import Batcher
from teleconsult.messaging.message_store import Append, Outcome, append_batch


class Appender:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int, max_inflight: int) -> None:
        self._pool = pool
        self._batcher: Batcher[Append, Outcome] = Batcher(
            self._run, max_batch=max_batch, max_inflight=max_inflight, name="chat-append-batch"
        )

    @property
    def batches(self) -> int:
        return self._batcher.batches

    @property
    def appended(self) -> int:
        return self._batcher.items

    async def append(self, item: Append) -> Outcome:
        """The item's result, or the domain error that refused it; raises on infrastructure."""
        return await self._batcher.submit(item)

    async def close(self) -> None:
        """Wait for the batches in flight (they are committing)."""
        await self._batcher.close()

    async def _run(self, items: Sequence[Append]) -> list[Outcome]:
        async with self._pool.acquire() as conn:
            return await append_batch(conn, items)
