"""Calls and recordings in the composition root: the network-test peers, the SFU
backends (Janus, LiveKit) and the recording store (its retention sweeper is a job:
``jobs.py``).

Each function is a cleanup context that ``create_app`` appends in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast
from uuid import UUID

from aiohttp import web

from teleconsult.accounts import routes as accounts_routes
from teleconsult.recording import routes as recording_routes
from teleconsult.recording.blobs import open_blob_store
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.service import RecordingService
from teleconsult.recording.sfu_events import RecordingIntake
from teleconsult.rtc import livekit_routes
from teleconsult.rtc import routes as rtc_routes
from teleconsult.rtc.addresses import PeerAddressPolicy
from teleconsult.rtc.janus_runtime import janus_backend
from teleconsult.rtc.livekit_runtime import livekit_backend
from teleconsult.rtc.network_test import NetworkTestRunner
from teleconsult.rtc.service import NetworkTestService
from teleconsult.rtc.sfu import Sfu, SfuEvent
from teleconsult.rtc.sfu_relay import SfuRelay
from teleconsult.server.keys import AUDIT, POOL, REVOCATIONS, SETTINGS
from teleconsult.signaling.sfu_bridge import SfuBridge
from teleconsult.signaling.sfu_rooms import create_sfu_rooms


async def rtc_context(app: web.Application) -> AsyncIterator[None]:
    """The server's own WebRTC peers (pre-call network tests), all closed on shutdown."""
    settings = app[SETTINGS].rtc
    runner = NetworkTestRunner(
        max_concurrent=settings.max_concurrent_tests,
        max_seconds=settings.max_test_seconds,
        peer_policy=PeerAddressPolicy.of(settings.allowed_peer_networks),
        public_ips=settings.public_ips,
    )
    tests = NetworkTestService(pool=app[POOL], audit=app[AUDIT], runner=runner)
    app[rtc_routes.NETWORK_TESTS] = tests
    app[REVOCATIONS].add_handler(tests.on_revocation)  # _bus, an earlier context, made it
    try:
        yield
    finally:
        await tests.close()
        await runner.close()


# --- livekit (issue 13, part L) ---
async def livekit_context(app: web.Application) -> AsyncIterator[None]:
    """With LIVEKIT_URL: the LiveKit SFU, its webhook intake and reconciler."""
    settings = app[SETTINGS].livekit
    if not settings.enabled:
        yield
        return
    recordings = RecordingIntake(app[recording_routes.RECORDINGS])

    async def hand_over(event: SfuEvent) -> None:
        """A finished egress file goes straight to the recording store to be sealed
        (idempotent: the intake may hand a recording's end on more than once)."""
        await recordings.handle(event)

    async with livekit_backend(settings, app[POOL], app[AUDIT]) as (sfu, intake):
        sfu.on_event(hand_over)
        app[livekit_routes.LIVEKIT_SFU] = sfu
        app[livekit_routes.LIVEKIT_INTAKE] = intake
        yield


# --- end livekit (issue 13, part L) ---


# --- recordings (issue 13, part R) ---
async def recordings_context(app: web.Application) -> AsyncIterator[None]:
    """Recordings sealed at rest: the blob store and the service (also for the CLI)."""
    settings = app[SETTINGS].recording
    blobs = open_blob_store(settings)
    app[recording_routes.RECORDINGS] = RecordingService(
        pool=app[POOL],
        audit=app[AUDIT],
        blobs=blobs,
        keys=KeyRing.of(settings.keys),
        chunk_size=settings.chunk_size,
        sessions=app[accounts_routes.ACCOUNTS],  # _services, an earlier context, made it
    )
    try:
        yield
    finally:
        await blobs.close()


# --- end recordings (issue 13, part R) ---


# --- sfu / janus (issue 13, part J) ---
SFU_BACKEND = web.AppKey("sfu_backend", object)
SFU_RELAY = web.AppKey("sfu_relay", object)


async def janus_context(app: web.Application) -> AsyncIterator[None]:
    """With SFU=janus: Janus (ours on loopback unless JANUS_URL), whose finished
    recordings go straight to the recording store to be sealed."""
    settings = app[SETTINGS].sfu
    if settings.kind != "janus":
        yield
        return

    async def hand_over(event: SfuEvent) -> None:
        """Recording events go to the recording store's intake (seal, or fail; an
        unknown recording's file is removed unsealed)."""
        await RecordingIntake(app[recording_routes.RECORDINGS]).handle(event)

    # Several processes share the grants and recordings through Redis (issue 13, part MP).
    redis_url = app[SETTINGS].redis.url
    async with janus_backend(settings, hand_over, redis_url=redis_url) as sfu:
        app[SFU_BACKEND] = sfu
        app[SFU_RELAY] = sfu
        yield


def _consent_of(recordings: RecordingService) -> Callable[[UUID], Awaitable[bool]]:
    async def consented(consultation_id: UUID) -> bool:
        return (await recordings.state(consultation_id)).consent

    return consented


def sfu_bridge(app: web.Application, publish: Any) -> SfuBridge | None:
    """The SFU that takes rooms past peer to peer (SFU=janus|livekit), or None."""
    kind = app[SETTINGS].sfu.kind
    sfu: Sfu | None = None
    relay: SfuRelay | None = None
    if kind == "janus":
        sfu = cast(Sfu, app[SFU_BACKEND])
        relay = cast(SfuRelay, app[SFU_RELAY])
    elif kind == "livekit" and livekit_routes.LIVEKIT_SFU in app:
        sfu = cast(Sfu, app[livekit_routes.LIVEKIT_SFU])
    if sfu is None:
        return None
    recordings = app.get(recording_routes.RECORDINGS)
    begin = recordings.begin if recordings else None
    consented = _consent_of(recordings) if recordings else None
    shared = create_sfu_rooms(app[SETTINGS].redis.url)  # issue 13, part MP
    return SfuBridge(sfu, relay, publish, begin_recording=begin, consented=consented, shared=shared)


# --- end sfu / janus (issue 13, part J) ---
