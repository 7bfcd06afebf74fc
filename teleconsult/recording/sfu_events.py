"""The SFU's recording events into the recording store.

Whoever receives the SFU's events (``Sfu.on_event`` takes one handler) passes the
recording ones to :meth:`RecordingIntake.handle`: ``RECORDING_FINISHED`` seals the
backend's plaintext file (``SfuEvent.file_path``) and removes it,
``RECORDING_FAILED`` ends the recording as failed. Both are idempotent, so events
that come twice change nothing more. A finished file for a recording we never
started (no consent was checked for it) is removed unsealed, and logged.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from teleconsult.recording.service import RecordingService
from teleconsult.recording.storage import overwrite_and_unlink
from teleconsult.recording.store import Recording
from teleconsult.rtc.sfu import SfuEvent, SfuEventKind

logger = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".mp4": "video/mp4",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
}


def content_type_of(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")


class RecordingIntake:
    def __init__(self, recordings: RecordingService) -> None:
        self._recordings = recordings

    async def handle(self, event: SfuEvent) -> Recording | None:
        """Act on a recording event; None for other events and unknown recordings."""
        if event.kind not in (SfuEventKind.RECORDING_FINISHED, SfuEventKind.RECORDING_FAILED):
            return None
        found = None
        if event.recording_id is not None:
            found = await self._recordings.find(event.consultation_id, event.recording_id)
        if event.kind is SfuEventKind.RECORDING_FAILED:
            if found is None:
                return None
            return await self._recordings.fail(found.id, "the SFU could not finish it")
        if event.file_path is None:
            return None if found is None else await self._recordings.fail(found.id, "no file")
        path = Path(event.file_path)
        if found is None:
            logger.warning(
                "a recording file for consultation %s came with no recording of ours; "
                "removed unsealed",
                event.consultation_id,
            )
            await asyncio.to_thread(overwrite_and_unlink, path)
            return None
        return await self._recordings.ingest(found.id, path, content_type_of(path))
