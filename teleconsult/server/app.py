"""The composition root: ``create_app(settings)`` wires every part once.

Each long-lived resource (database pool, bus, rate limiter, services) is
opened and closed by its own cleanup context and stored under a typed key.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import replace as dataclass_replace  # payments (issue 15)
from typing import Any
from uuid import UUID

from aiohttp import web

from teleconsult.accounts import browser_session  # web pages (issue 12, part A)
from teleconsult.accounts import routes as accounts_routes
from teleconsult.accounts.service import AccountService
from teleconsult.api import headers, ops
from teleconsult.api.openapi import build_openapi
from teleconsult.api.problems import problem_middleware
from teleconsult.api.refusals import AuditedRefusals
from teleconsult.api.registry import (
    AUTHENTICATOR,
    MAX_BODY_BYTES,
    REFUSALS,
    TRUST_FORWARDED_FOR,
    TRUSTED_PROXY_COUNT,
    Operation,
    mount,
)
from teleconsult.audit import AuditSequencer, AuditTrail, CheckpointSigner
from teleconsult.audit import routes as audit_routes
from teleconsult.core import db
from teleconsult.core.bus import create_bus
from teleconsult.core.embedded_pg import EmbeddedPostgres
from teleconsult.core.errors import ConfigError
from teleconsult.core.logging import request_id_middleware
from teleconsult.core.metrics import EventLoopLagMonitor, Metrics
from teleconsult.core.migrations import migrate, migrate_database, wait_for_schema
from teleconsult.core.mqtt_probe import mqtt_reachable
from teleconsult.core.outages import OUTAGE_FILTER, OUTAGES
from teleconsult.core.passwords import PasswordHasher
from teleconsult.core.ratelimit import create_rate_limiter
from teleconsult.core.revocation import Revocations
from teleconsult.core.settings import Settings
from teleconsult.core.tokens import TokenService
from teleconsult.fhir import export_routes as fhir_export_routes  # fhir (issue 14, F)
from teleconsult.fhir import routes as fhir_routes
from teleconsult.fhir import search_routes as fhir_search_routes  # fhir (issue 14, F)
from teleconsult.fhir.outcome import fhir_outcome_middleware  # fhir (issue 14, F)
from teleconsult.messaging import mqtt_routes, wire
from teleconsult.messaging import routes as messaging_routes
from teleconsult.messaging import store as messaging_store
from teleconsult.messaging.appender import Appender
from teleconsult.messaging.chat import ChatService
from teleconsult.messaging.directory import ThreadDirectory
from teleconsult.messaging.mqtt_bridge import mqtt_transport
from teleconsult.messaging.namespace import NAMESPACE as CHAT_NAMESPACE
from teleconsult.messaging.namespace import ChatNamespace
from teleconsult.messaging.offline import OfflineNotifier
from teleconsult.messaging.routes import CHAT
from teleconsult.messaging.service import MessagingService
from teleconsult.pages import routes as pages_routes  # web pages (issue 12, part A)
from teleconsult.payments import refund_routes as payments_refund_routes
from teleconsult.payments import routes as payments_routes  # payments (issue 15)
from teleconsult.payments.simulators import build_simulators  # payments (issue 15)
from teleconsult.payments.simulators.app import demo_settings  # payments (issue 15)
from teleconsult.realtime.guard import SessionGuard
from teleconsult.realtime.hub import Hub
from teleconsult.realtime.presence import create_presence
from teleconsult.realtime.refusals import EventRefusals
from teleconsult.realtime.server import attach_socketio, outside_realtime

# --- recordings (issue 13, part R) ---
from teleconsult.recording import routes as recording_routes
from teleconsult.recording.service import RoomRecordingState

# --- end recordings ---
# --- records (issue 14, part R) ---
from teleconsult.records import http as records_http
from teleconsult.records.base import RecordsDeps
from teleconsult.records.fieldcrypt import FieldCrypt

# --- end records ---
from teleconsult.rtc import livekit_routes  # livekit (issue 13, part L)
from teleconsult.rtc import routes as rtc_routes
from teleconsult.scheduling import feed_routes, join_routes  # join: issue 12 follow-up
from teleconsult.scheduling import routes as scheduling_routes
from teleconsult.scheduling.availability import AvailabilityService
from teleconsult.scheduling.feeds import CalendarFeedService
from teleconsult.scheduling.service import SchedulingService
from teleconsult.server.clinical import fhir_context, payments_context, record_documents_context
from teleconsult.server.jobs import server_jobs, worker_jobs
from teleconsult.server.keys import (
    AUDIT,
    AUDIT_SEQUENCER,
    BUS,
    CHAT_NAMESPACE_KEY,
    DATABASE_DSN,
    DIRECTORY,
    GUARD,
    LIMITER,
    METRICS,
    MIGRATES,
    MQTT_BRIDGE,
    POOL,
    REALTIME,
    REVOCATIONS,
    SETTINGS,
    SIGNAL_NAMESPACE,
)
from teleconsult.server.media import (
    SFU_BACKEND,
    janus_context,
    livekit_context,
    recordings_context,
    rtc_context,
    sfu_bridge,
)
from teleconsult.signaling.namespace import SIGNALING, SignalNamespace, signal_hub
from teleconsult.signaling.rooms import create_rooms
from teleconsult.signaling.service import SignalingService
from teleconsult.turn import routes as turn_routes
from teleconsult.turn.service import TurnService

__all__ = [
    "AUDIT",
    "AUDIT_SEQUENCER",
    "BUS",
    "CHAT_NAMESPACE_KEY",
    "DATABASE_DSN",
    "DIRECTORY",
    "GUARD",
    "LIMITER",
    "METRICS",
    "MQTT_BRIDGE",
    "POOL",
    "REALTIME",
    "REVOCATIONS",
    "SETTINGS",
    "SFU_BACKEND",
    "SIGNAL_NAMESPACE",
    "all_operations",
    "create_app",
    "create_service_app",
    "create_worker_app",
]

logger = logging.getLogger(__name__)


def all_operations() -> list[Operation]:
    return [
        *ops.api.operations,
        *accounts_routes.api.operations,
        *records_http.operations(),  # records (issue 14)
        *audit_routes.api.operations,
        *scheduling_routes.api.operations,
        *feed_routes.api.operations,
        *join_routes.api.operations,  # join links (issue 12 follow-up)
        *fhir_routes.api.operations,
        # fhir (issue 14, F): export first, so /Patient/$export wins over /Patient/{id}
        *fhir_export_routes.api.operations,
        *fhir_search_routes.api.operations,
        *messaging_routes.api.operations,
        *turn_routes.api.operations,
        *rtc_routes.api.operations,
        *livekit_routes.api.operations,  # livekit (issue 13, part L)
        *recording_routes.api.operations,  # recordings (issue 13, part R)
        *payments_routes.api.operations,  # payments (issue 15)
        *payments_refund_routes.api.operations,
    ]


async def _database(app: web.Application) -> AsyncIterator[None]:
    """Migrate as the owner role, then serve as the runtime role (README, Database)."""
    settings = app[SETTINGS].database
    embedded: EmbeddedPostgres | None = None
    if settings.url is None:
        embedded = EmbeddedPostgres(app[SETTINGS].data_dir)
        urls = await embedded.start()
    else:
        urls = db.DatabaseUrls(settings.url, settings.owner_url, settings.runtime_role)
    migrates = app.get(MIGRATES, True)
    try:
        if urls.owner is not None and migrates:
            await migrate_database(urls)
        pool = await db.create_pool(
            urls.runtime,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            least_privilege=urls.owner is not None,
            runtime_role=urls.runtime_role,
        )
        try:
            if not migrates:
                await wait_for_schema(pool, patience=settings.schema_wait_seconds)
            elif urls.owner is None:
                async with pool.acquire() as conn:
                    await migrate(conn)
            await db.warn_if_privileged(pool)
            app[POOL] = pool
            app[DATABASE_DSN] = urls.runtime
            yield
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await embedded.stop()


async def _bus(app: web.Application) -> AsyncIterator[None]:
    bus = create_bus(app[SETTINGS].redis.url)
    await bus.start()
    app[BUS] = bus
    revocations = Revocations(bus)
    await revocations.start()
    app[REVOCATIONS] = revocations
    try:
        yield
    finally:
        await revocations.close()
        await bus.close()


async def _limiter(app: web.Application) -> AsyncIterator[None]:
    limiter = create_rate_limiter(app[SETTINGS].redis.url)
    app[LIMITER] = limiter
    try:
        yield
    finally:
        await limiter.close()


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = app[POOL]
    audit = AuditTrail(pool)
    accounts = AccountService(
        pool=pool,
        hasher=PasswordHasher(
            memlimit_kib=settings.auth.password_memlimit_kib,
            opslimit=settings.auth.password_opslimit,
        ),
        tokens=TokenService(
            secret=settings.auth.jwt_secret,
            issuer=settings.auth.issuer,
            access_ttl=settings.auth.access_ttl,
        ),
        audit=audit,
        limiter=app[LIMITER],
        settings=settings.auth,
        revocations=app[REVOCATIONS].announce,
    )
    app[AUDIT] = audit
    app[accounts_routes.ACCOUNTS] = accounts
    app[AUTHENTICATOR] = accounts
    app[REFUSALS] = AuditedRefusals(
        audit, app[LIMITER], per_minute=settings.audit.refusals_per_minute, metrics=app.get(METRICS)
    )
    # --- records (issue 14, part R): field keys unwrapped by the configured master keys
    crypt = FieldCrypt(dict(settings.records.master_keys))
    records_http.install(app, RecordsDeps(pool=pool, audit=audit, crypt=crypt))
    # --- end records ---
    app[audit_routes.AUDIT_TRAIL] = audit
    calendars = AvailabilityService(pool=pool, audit=audit)
    app[scheduling_routes.CALENDARS] = calendars
    app[scheduling_routes.SCHEDULING] = SchedulingService(
        pool=pool, audit=audit, calendars=calendars, settings=settings.scheduling
    )
    directory = ThreadDirectory(pool, app[BUS], ttl=settings.chat.directory_ttl)
    await directory.start()
    appender = Appender(
        pool, max_batch=settings.chat.append_batch, max_inflight=settings.chat.append_inflight
    )
    app[DIRECTORY] = directory
    app[messaging_routes.MESSAGING] = MessagingService(
        pool=pool,
        audit=audit,
        directory=directory,
        appender=appender,
        revocations=app[REVOCATIONS].announce,
    )
    app[turn_routes.TURN] = TurnService(settings.turn, limiter=app[LIMITER])
    app[feed_routes.FEEDS] = CalendarFeedService(
        pool=pool, audit=audit, calendars=calendars, public_url=settings.public_url
    )

    async def database_ok() -> bool:
        return await db.ping(pool)

    async def bus_ok() -> bool:
        return await app[BUS].ping()

    probes: dict[str, ops.Probe] = {"database": database_ok, "bus": bus_ok}
    OUTAGES.set_probe("database", database_ok)
    logging.getLogger("asyncpg.pool").addFilter(OUTAGE_FILTER)
    if settings.redis.url:
        OUTAGES.set_probe("redis", bus_ok)
    mqtt_url = settings.mqtt.url
    if mqtt_url is not None:

        async def broker_ok() -> bool:
            return await mqtt_reachable(mqtt_url)

        probes["broker"] = broker_ok
    app[ops.PROBES] = probes
    try:
        yield
    finally:
        OUTAGES.clear()
        await appender.close()
        await directory.close()


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    app = web.Application(
        middlewares=[
            outside_realtime(m)
            for m in (
                request_id_middleware,
                metrics.middleware,
                fhir_outcome_middleware,  # fhir (issue 14, F): OperationOutcome under /fhir/
                problem_middleware,
            )
        ],
        client_max_size=settings.http.max_body_bytes,
    )
    if settings.payments.demo:  # payments (issue 15): the demo clinic's providers
        sim_app, sims = build_simulators(webhook_base=settings.payments.callback_base_url)
        app.add_subapp("/_simulators", sim_app)
        demo = demo_settings(settings.payments, sims, f"{settings.public_url}/_simulators")
        settings = dataclass_replace(settings, payments=demo)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[MAX_BODY_BYTES] = settings.http.max_body_bytes
    app[TRUST_FORWARDED_FOR] = settings.http.trust_forwarded_for
    app[TRUSTED_PROXY_COUNT] = settings.http.trusted_proxy_count
    app[scheduling_routes.PUBLIC_URL] = settings.public_url

    operations = all_operations()
    if settings.mqtt.provisioning != "off":  # only where the server makes MQTT accounts
        operations += mqtt_routes.api.operations
    mount(app, operations)
    app[ops.OPENAPI] = build_openapi(operations)
    app.router.add_get("/api/v1/openapi.json", ops.openapi_json, name="openapi")
    if settings.http.metrics_port is None:  # else on its own listener (cli serve)
        app.router.add_get(
            "/metrics", metrics.handler_for(settings.http.metrics_token), name="metrics"
        )
    headers.install(app)
    # --- web pages (issue 12, part A): /, /<page>.html, /static/ after the API's routes ---
    livekit = settings.livekit.url if settings.sfu.kind == "livekit" else None
    pages_routes.install(app, connect=pages_routes.sfu_origins(livekit))
    app[browser_session.SECURE_COOKIES] = settings.public_url.startswith("https:")

    realtime = attach_socketio(app, settings.chat)
    app[REALTIME] = realtime
    app.on_shutdown.append(_close_realtime)

    _add_resources(app)
    app.cleanup_ctx.append(record_documents_context)  # records (issue 14, part R)
    app.cleanup_ctx.append(payments_context)  # payments (issue 15): before _signaling (the gate)
    app.cleanup_ctx.append(rtc_context)
    app.cleanup_ctx.append(livekit_context)  # livekit (issue 13, part L)
    app.cleanup_ctx.append(_guard)
    app.cleanup_ctx.append(_chat)
    app.cleanup_ctx.append(janus_context)  # sfu / janus (issue 13, part J)
    app.cleanup_ctx.append(_signaling)
    app.cleanup_ctx.append(_mqtt)
    app.cleanup_ctx.append(fhir_context)  # fhir (issue 14, F)
    app.cleanup_ctx.append(server_jobs)  # the jobs BACKGROUND_JOBS keeps here (jobs.py)
    app.cleanup_ctx.append(EventLoopLagMonitor(metrics).cleanup_ctx)
    return app


async def _guard(app: web.Application) -> AsyncIterator[None]:
    """One re-check of every live connection's login session per period, for all namespaces."""
    guard = SessionGuard(
        app[accounts_routes.ACCOUNTS], period=app[SETTINGS].chat.auth_recheck_seconds
    )
    await guard.start()
    app[GUARD] = guard
    app[REVOCATIONS].add_handler(guard.on_revocation)
    try:
        yield
    finally:
        await guard.close()


async def _chat(app: web.Application) -> AsyncIterator[None]:
    """Live chat: presence, the hub that feeds this process's connections, the service,
    and the /chat namespace (registered once its services exist)."""
    settings = app[SETTINGS]
    presence = create_presence(settings.redis.url, ttl=settings.chat.presence_ttl)
    hub = Hub(
        app[REALTIME],
        app[BUS],
        namespace=CHAT_NAMESPACE,
        channel="tc.chat",
        max_events=settings.chat.max_queued_events,
        max_bytes=settings.chat.max_queued_bytes,
        adapt=wire.push_payload,
        resync_event="sync",
    )
    await hub.start()
    chat = ChatService(
        messaging=app[messaging_routes.MESSAGING],
        hub=hub,
        presence=presence,
        limiter=app[LIMITER],
        settings=settings.chat,
        refusals=EventRefusals(app[REFUSALS]),
    )
    if settings.chat.offline_hook:
        chat.add_sink(OfflineNotifier(app[POOL], presence).sink)
    await chat.start()
    app[CHAT] = chat
    namespace = ChatNamespace(chat=chat, guard=app[GUARD], settings=settings.chat)
    app[REALTIME].register_namespace(namespace)
    app[CHAT_NAMESPACE_KEY] = namespace
    try:
        yield
    finally:
        await chat.close()
        await hub.close()
        await presence.close()


async def _close_realtime(app: web.Application) -> None:
    """On shutdown, before any service stops: end every Socket.IO connection now.

    Their disconnect handlers run while the pool and the hub still work (peers
    go into grace, presence is cleared), clients start reconnecting (to another
    process behind the balancer), and open long-polls do not hold the shutdown
    for its whole timeout.
    """
    server = app[REALTIME]
    # Not engine.io's disconnect-all: it waits until each socket's queue is
    # read, and a long-polling client that went away (common on weak networks)
    # never reads it, which held the shutdown forever.
    for sid, socket in list(server.eio.sockets.items()):
        with contextlib.suppress(Exception):
            await socket.close(wait=False)
        server.eio.sockets.pop(sid, None)
    await server.shutdown()


async def _signaling(app: web.Application) -> AsyncIterator[None]:
    """Consultation rooms: the shared room registry, the hub that feeds this process's
    /signal sockets, the service, and the /signal namespace (registered once its
    services exist) with its one sweep task."""
    settings = app[SETTINGS]
    # A peer no process vouched for in three heartbeats belonged to a process that died.
    rooms = create_rooms(settings.redis.url, silence=3 * settings.signal.heartbeat_seconds)
    turn = app[turn_routes.TURN]

    def ice_servers(user_id: UUID) -> tuple[list[dict[str, Any]], float | None]:
        """TURN credentials for the join answer, and when to push fresh ones."""
        credentials = turn.for_user(user_id)
        return credentials.ice_servers(), float(turn.refresh_at(credentials))

    hub = signal_hub(app[REALTIME], app[BUS], settings.chat)
    await hub.start()
    service = SignalingService(
        pool=app[POOL],
        rooms=rooms,
        outbox=hub,
        settings=settings.signal,
        ice=ice_servers,
        network=app[rtc_routes.NETWORK_TESTS].latest_for,
        sfu=sfu_bridge(app, hub.publish),  # sfu / janus (issue 13, part J)
        sfu_max_peers=settings.sfu.max_peers,
        gate=app[payments_routes.PAYMENTS].ensure_paid,  # payments (issue 15)
    )
    app[SIGNALING] = service
    if recording_routes.RECORDINGS in app:  # sfu / janus (issue 13, part J)

        async def recording_changed(state: RoomRecordingState) -> None:
            await service.recording_changed(state.appointment_id, state.consent, state.recording)

        app[recording_routes.RECORDINGS].on_change(recording_changed)
    namespace = SignalNamespace(
        signaling=service,
        guard=app[GUARD],
        hub=hub,
        settings=settings.chat,
        refusals=EventRefusals(app[REFUSALS]),
    )
    app[REALTIME].register_namespace(namespace)
    app[SIGNAL_NAMESPACE] = namespace
    await namespace.start()
    try:
        yield
    finally:
        await namespace.stop()
        await service.close()
        await hub.close()
        await rooms.close()


async def _mqtt(app: web.Application) -> AsyncIterator[None]:
    """The MQTT transport: the bridge, and an embedded broker unless MQTT_URL names one."""
    accounts = app[accounts_routes.ACCOUNTS]
    dropped = app[METRICS].mqtt_requests_dropped
    async with mqtt_transport(
        app[SETTINGS].mqtt,
        chat=app[CHAT],
        principals=accounts.principal_of_user,
        authenticate=accounts.authenticate,
        devices=functools.partial(messaging_store.get_device, app[POOL]),
        on_dropped=lambda reason: dropped.labels(reason).inc(),
        revocations=app[REVOCATIONS].add_handler,
    ) as parts:
        if parts is not None:
            app[MQTT_BRIDGE] = parts.bridge
            # Ready when the bridge is subscribed, not merely when the broker answers.
            app[ops.PROBES]["broker"] = parts.bridge.subscribed
            if parts.accounts is not None:
                app[mqtt_routes.MQTT_ACCOUNTS] = parts.accounts
        yield


def _add_resources(app: web.Application) -> None:
    # recordings_context: recordings (issue 13, part R), also for `teleconsult recordings`
    app.cleanup_ctx.extend([_database, _audit, _bus, _limiter, _services, recordings_context])


async def _audit(app: web.Application) -> AsyncIterator[None]:
    """This process's audit sequencer: chains the intake while it holds the cluster's lock."""
    settings = app[SETTINGS].audit
    if not settings.signing_key:
        raise ConfigError("AUDIT_SIGNING_KEY", "no audit signing key configured")
    sequencer = AuditSequencer(
        app[DATABASE_DSN],
        signer=CheckpointSigner(settings.signing_key),
        checkpoint_file=settings.checkpoint_file,
        batch_size=settings.batch_size,
        interval=settings.interval,
    )
    await sequencer.start()
    app[AUDIT_SEQUENCER] = sequencer
    try:
        yield
    finally:
        await sequencer.close()


def create_service_app(settings: Settings) -> web.Application:
    """The resources and services without HTTP routes, for command-line tools."""
    app = web.Application()
    app[SETTINGS] = settings
    _add_resources(app)
    return app


def create_worker_app(settings: Settings) -> web.Application:
    """``teleconsult worker``: the services the background jobs use, and every job
    (server/jobs.py), without HTTP."""
    app = create_service_app(settings)
    # A worker never migrates, so it needs only the runtime role (DATABASE_URL): it
    # waits for a server (or `teleconsult migrate`) to bring the schema up to date.
    app[MIGRATES] = False
    app.cleanup_ctx.extend([record_documents_context, payments_context, fhir_context, worker_jobs])
    return app
