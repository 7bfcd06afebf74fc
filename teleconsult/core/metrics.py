"""Prometheus metrics: HTTP traffic, open connections and event-loop lag.

Each :class:`Metrics` owns its own ``CollectorRegistry`` so that several
applications in one process (tests) do not collide on metric names. Other
modules register their own collectors on ``metrics.registry``.

Label values are kept bounded: the ``route`` label is the matched resource's
template (``/api/v1/patients/{patient_id}``), never the concrete path, and
``unmatched`` for requests that matched no resource (404, 405); unknown HTTP
methods are folded into ``OTHER``.

Wiring (in the composition root)::

    metrics = Metrics()
    app = web.Application(middlewares=[request_id_middleware, metrics.middleware, ...])
    app.router.add_get("/metrics", metrics.handler)
    app.cleanup_ctx.append(EventLoopLagMonitor(metrics).cleanup_ctx)
    runner = web.AppRunner(app, access_log_class=JsonAccessLogger, access_log=...)
    await runner.setup()
    metrics.set_connection_counter(lambda: count_open_connections(runner))
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

logger = logging.getLogger(__name__)

UNMATCHED_ROUTE = "unmatched"

# Latency of an API call: from a cached lookup (5 ms) to a slow report (10 s).
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A healthy loop wakes within a millisecond; anything past 100 ms is user-visible.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


def route_template(request: web.BaseRequest) -> str:
    """The matched resource's canonical template, or ``unmatched``.

    Safe on any request: a request that failed before routing (a malformed
    request line, say) has no match info and counts as unmatched.
    """
    if not isinstance(request, web.Request):
        return UNMATCHED_ROUTE
    try:
        resource = request.match_info.route.resource
    except (AssertionError, AttributeError):  # not routed (yet)
        return UNMATCHED_ROUTE
    if resource is None:
        return UNMATCHED_ROUTE
    canonical: str = resource.canonical
    return canonical


def method_label(method: str) -> str:
    """The request method, with anything non-standard folded into ``OTHER``."""
    return method if method in _KNOWN_METHODS else "OTHER"


def count_open_connections(runner: web.BaseRunner) -> int:
    """Number of connections currently open on ``runner``'s low-level server.

    Uses the public ``BaseRunner.server`` and ``Server.connections``
    properties: aiohttp already tracks every connection there (including
    idle keep-alive ones), which request hooks such as ``on_response_prepare``
    cannot see. Returns 0 before ``runner.setup()`` and after cleanup.
    """
    server = runner.server
    return 0 if server is None else len(server.connections)


class Metrics:
    """The server's Prometheus registry and the HTTP middleware that feeds it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "teleconsult_http_requests_total",
            "HTTP requests handled, by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "teleconsult_http_request_duration_seconds",
            "Time spent handling an HTTP request, by method and route template.",
            ("method", "route"),
            buckets=HTTP_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.http_in_progress = Gauge(
            "teleconsult_http_requests_in_progress",
            "HTTP requests currently being handled.",
            registry=self.registry,
        )
        self.open_connections = Gauge(
            "teleconsult_open_connections",
            "Client connections currently open on the HTTP server.",
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "teleconsult_event_loop_lag_seconds",
            "How late the event loop woke up a sleeping task.",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag_last = Gauge(
            "teleconsult_event_loop_lag_last_seconds",
            "The most recent event-loop lag measurement.",
            registry=self.registry,
        )
        self.authz_refusals = Counter(
            "teleconsult_authz_refusals_total",
            "Signed-in requests the policy refused (403, or 404 out of scope), by status.",
            ("status",),
            registry=self.registry,
        )
        self.authz_refusals_unaudited = Counter(
            "teleconsult_authz_refusals_unaudited_total",
            "Refusals past the audit trail's per-actor limit, counted here only.",
            registry=self.registry,
        )
        self.mqtt_requests_dropped = Counter(
            "teleconsult_mqtt_requests_dropped_total",
            "MQTT requests the bridge dropped unanswered (no valid device signature), by reason.",
            ("reason",),
            registry=self.registry,
        )
        self._connection_counter: Callable[[], int] = lambda: 0
        self.open_connections.set_function(self._read_connections)

    def set_connection_counter(self, counter: Callable[[], int]) -> None:
        """Use ``counter`` (called at scrape time) for ``teleconsult_open_connections``."""
        self._connection_counter = counter

    def _read_connections(self) -> float:
        try:
            return float(self._connection_counter())
        except Exception:
            # A broken counter must not break the whole scrape.
            logger.warning("open-connection counter failed", exc_info=True)
            return math.nan

    def observe_loop_lag(self, lag: float) -> None:
        self.loop_lag.observe(lag)
        self.loop_lag_last.set(lag)

    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format: (body, content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def handler(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        body, content_type = self.render()
        # The content type carries a charset, which ``content_type=`` refuses.
        return web.Response(body=body, headers={"Content-Type": content_type})

    def handler_for(self, token: str | None) -> Handler:
        """``GET /metrics``, or with ``token`` (METRICS_TOKEN) only for a caller who
        sends ``Authorization: Bearer <token>``; anyone else gets 401."""
        if token is None:
            return self.handler
        expected = f"Bearer {token}".encode()

        async def guarded(request: web.Request) -> web.StreamResponse:
            sent = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(sent, expected):
                # An HTTPException: the API renders it as a problem, a bare listener as text.
                raise web.HTTPUnauthorized(
                    text="send the metrics token as 'Authorization: Bearer <token>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await self.handler(request)

        return guarded

    def app(self, token: str | None) -> web.Application:
        """A small application serving only ``/metrics``, for a listener of its own
        (METRICS_PORT): Prometheus scrapes it on a private address."""
        app = web.Application()
        app.router.add_get("/metrics", self.handler_for(token), name="metrics")
        return app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count and time every request by route template and final status.

        An ``HTTPException`` counts with its own status; any other exception
        counts as 500 and propagates. A cancelled request (client gone) only
        leaves the in-progress gauge.
        """
        method = method_label(request.method)
        route = route_template(request)
        started = time.perf_counter()
        self.http_in_progress.inc()
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                self._record(method, route, exc.status, started)
                raise
            except Exception:
                self._record(method, route, 500, started)
                raise
            self._record(method, route, response.status, started)
            return response
        finally:
            self.http_in_progress.dec()

    def _record(self, method: str, route: str, status: int, started: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(time.perf_counter() - started)


class EventLoopLagMonitor:
    """Measures how late ``asyncio.sleep(interval)`` wakes up, in a background task.

    Not safe to start twice concurrently; ``stop`` is idempotent.
    """

    def __init__(self, metrics: Metrics, interval: float = 0.5) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._metrics = metrics
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            raise RuntimeError("event-loop lag monitor already running")
        self._task = asyncio.create_task(self._run(), name="event-loop-lag-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: runs the monitor for the application's lifetime."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self._interval)
            self._metrics.observe_loop_lag(max(0.0, loop.time() - before - self._interval))
