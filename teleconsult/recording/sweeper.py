"""The retention sweeper: one background task per server process.

Every ``period`` seconds it asks :meth:`RecordingService.sweep_expired` to expire
what is due, batch after batch while batches come back full. Several processes
may sweep at once: the rows a sweep works on are locked (``FOR UPDATE SKIP
LOCKED``), the others skip them, like the outbox workers' claims.
"""

from __future__ import annotations

import asyncio
import logging

from teleconsult.core.outages import is_outage
from teleconsult.core.tasks import cancel_and_wait
from teleconsult.recording.service import RecordingService

logger = logging.getLogger(__name__)

BATCH = 50


class RetentionSweeper:
    def __init__(self, recordings: RecordingService, *, period: float) -> None:
        self._recordings = recordings
        self._period = period
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recording-retention")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                while await self._recordings.sweep_expired(limit=BATCH) == BATCH:
                    pass
            except Exception as exc:  # the next period tries again
                if is_outage(exc):
                    logger.warning("recording retention sweep: database unavailable")
                else:
                    logger.exception("recording retention sweep failed")
            await asyncio.sleep(self._period)
