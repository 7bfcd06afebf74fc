"""The LiveKit backend's lifetime: its HTTP session, the SFU, the intake, the reconciler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import asyncpg

from teleconsult.audit.store import AuditTrail
from teleconsult.core.settings import LiveKitSettings
from teleconsult.rtc.livekit import LiveKitSfu
from teleconsult.rtc.livekit_webhooks import LiveKitIntake

logger = logging.getLogger(__name__)


async def reconcile_forever(intake: LiveKitIntake, period: float) -> None:
    """The reconciler: every ``period`` seconds, settle recordings with no news."""
    while True:
        await asyncio.sleep(period)
        try:
            ended = await intake.tick()
            if ended:
                logger.info("the LiveKit reconciler ended %d recording(s)", ended)
        except Exception:  # the next tick tries again
            logger.warning("the LiveKit reconciler failed", exc_info=True)


@contextlib.asynccontextmanager
async def livekit_backend(
    settings: LiveKitSettings, pool: asyncpg.Pool, audit: AuditTrail
) -> AsyncIterator[tuple[LiveKitSfu, LiveKitIntake]]:
    """Opens the LiveKit SFU and its webhook intake; the reconciler runs meanwhile."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    sfu = LiveKitSfu(settings, session=session)
    intake = LiveKitIntake(pool, settings, audit=audit, lookups=sfu, deliver=sfu.deliver)
    task = asyncio.create_task(reconcile_forever(intake, settings.egress_check_seconds))
    try:
        yield sfu, intake
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sfu.close()
        await session.close()
