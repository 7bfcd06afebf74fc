"""The upload sweeper: one background task per server process.

Every ``period`` seconds it asks :meth:`DocumentService.sweep_expired_uploads` to delete
the document uploads that expired before they were completed (their encrypted chunks
with them), batch after batch while batches come back full. Several processes may
sweep at once: a batch's rows are locked ``FOR UPDATE SKIP LOCKED``, the others skip
them (like the recordings' retention sweeper)."""

from __future__ import annotations

import asyncio
import logging

from teleconsult.core.outages import is_outage
from teleconsult.core.tasks import cancel_and_wait
from teleconsult.records.documents.service import DocumentService

logger = logging.getLogger(__name__)

BATCH = 50


class UploadSweeper:
    def __init__(self, documents: DocumentService, *, period: float) -> None:
        self._documents = documents
        self._period = period
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="document-upload-sweeper")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    async def sweep(self) -> int:
        """Sweep until a batch comes back short; how many uploads were deleted."""
        total = 0
        while True:
            done = await self._documents.sweep_expired_uploads(limit=BATCH)
            total += done
            if done < BATCH:
                return total

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # the next period tries again
                if is_outage(exc):
                    logger.warning("document upload sweep: database unavailable")
                else:
                    logger.exception("document upload sweep failed")
            await asyncio.sleep(self._period)
