"""The background jobs, wired once for both places they run.

A job works beside the requests: it sends notifications, polls pending payments,
writes FHIR Bulk exports, sweeps expired document uploads and recordings past
retention. ``server_jobs`` runs, in a server process, the jobs its settings keep
there (``BACKGROUND_JOBS=server``, the default, keeps them all; a per-job
``*_IN_SERVER`` flag wins when set). ``worker_jobs`` runs every job, in
``teleconsult worker`` (``create_worker_app``).

Several processes may run the same job at once: each takes its work by a lease
or a row lock (``FOR UPDATE SKIP LOCKED``), so a piece of work is done by one of
them. A job starts on the services the earlier cleanup contexts made and says in
one line what it does; the jobs stop in reverse order.

Not here, because their work belongs to the process that serves: the audit
sequencer (every process that writes audit events runs one; one holds the lock),
the session guard, presence, the signaling sweep, and the LiveKit reconciler (its
events go to this process's SFU listeners; ``rtc/livekit_runtime.py``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from teleconsult.core.settings import Settings
from teleconsult.fhir import export_routes, search_routes
from teleconsult.fhir.export import ExportWorker
from teleconsult.notifications.worker import BackgroundWorker
from teleconsult.payments import routes as payments_routes
from teleconsult.payments.reconcile import Reconciler
from teleconsult.recording import routes as recording_routes
from teleconsult.recording.sweeper import RetentionSweeper
from teleconsult.records.documents.routes import DOCUMENTS
from teleconsult.records.documents.sweeper import UploadSweeper
from teleconsult.server.keys import AUDIT, POOL, SETTINGS

logger = logging.getLogger(__name__)

# What this process's jobs said when they started, one line each.
RUNNING_JOBS = web.AppKey("running_jobs", list[str])


@dataclass(frozen=True)
class Started:
    """A job under way: the line that says what it does, and how to stop it."""

    line: str
    stop: Callable[[], Awaitable[None]]


async def _notifications(app: web.Application) -> Started:
    settings = app[SETTINGS].notify
    worker = BackgroundWorker(settings)
    await worker.start(app[POOL])
    return Started(f"notifications: the outbox, sent through {settings.channel}", worker.stop)


async def _reconciler(app: web.Application) -> Started:
    settings = app[SETTINGS].payments
    reconciler = Reconciler(
        app[POOL],
        app[payments_routes.PAYMENTS],
        settings,
        keys=app[payments_routes.IDEMPOTENCY],
    )
    reconciler.start()
    poll = settings.poll_interval
    return Started(
        f"payments reconciler: pending payments polled from {poll:g} s on", reconciler.stop
    )


async def _fhir_exports(app: web.Application) -> Started:
    settings = app[SETTINGS].fhir
    fhir = app[search_routes.FHIR]
    worker = ExportWorker(
        pool=app[POOL], audit=app[AUDIT], tables=fhir.tables, settings=settings, crypt=fhir.crypt
    )
    # A server's kick-off wakes its own worker rather than waiting for the next poll.
    app[export_routes.EXPORT_WORKER] = worker
    await worker.start()
    return Started(f"FHIR Bulk export worker: files in {settings.export_dir}", worker.close)


async def _upload_sweeper(app: web.Application) -> Started:
    period = app[SETTINGS].recording.sweep_seconds
    sweeper = UploadSweeper(app[DOCUMENTS], period=period)
    sweeper.start()
    return Started(
        f"document upload sweeper: expired uploads deleted every {period:g} s", sweeper.stop
    )


async def _retention_sweeper(app: web.Application) -> Started:
    period = app[SETTINGS].recording.sweep_seconds
    sweeper = RetentionSweeper(app[recording_routes.RECORDINGS], period=period)
    sweeper.start()
    line = f"recording retention sweeper: recordings past retention shredded every {period:g} s"
    return Started(line, sweeper.stop)


@dataclass(frozen=True)
class Job:
    name: str
    # Whether a server process runs it, by its settings.
    in_server: Callable[[Settings], bool]
    start: Callable[[web.Application], Awaitable[Started]]
    # Why a worker does not run it with these settings, if it does not.
    not_in_worker: Callable[[Settings], str | None] = lambda _: None


def _by_default(settings: Settings) -> bool:
    return settings.background_jobs == "server"


def _demo_payments(settings: Settings) -> str | None:
    if settings.payments.demo:
        return "the demo simulators (PAYMENTS_DEMO) live in the server, which polls them"
    return None


JOBS: tuple[Job, ...] = (
    Job("notifications", lambda s: s.notify.run_in_server, _notifications),
    Job(
        "payments reconciler",
        lambda s: s.payments.reconcile_in_server,
        _reconciler,
        not_in_worker=_demo_payments,
    ),
    Job("FHIR export worker", lambda s: s.fhir.run_in_server, _fhir_exports),
    Job("document upload sweeper", _by_default, _upload_sweeper),
    Job("recording retention sweeper", _by_default, _retention_sweeper),
)


@contextlib.asynccontextmanager
async def _running(
    app: web.Application, jobs: list[Job], skipped: tuple[str, ...] = ()
) -> AsyncIterator[None]:
    lines = list(skipped)
    app[RUNNING_JOBS] = lines
    async with contextlib.AsyncExitStack() as stack:
        for job in jobs:
            started = await job.start(app)
            stack.push_async_callback(started.stop)
            lines.append(started.line)
            logger.info("background job: %s", started.line)
        yield


async def server_jobs(app: web.Application) -> AsyncIterator[None]:
    """The jobs this server runs (a cleanup context, after every service's)."""
    settings = app[SETTINGS]
    jobs = [job for job in JOBS if job.in_server(settings)]
    left = [job.name for job in JOBS if job not in jobs]
    if left:
        logger.info(
            "background jobs left to `teleconsult worker` (BACKGROUND_JOBS=%s): %s",
            settings.background_jobs,
            ", ".join(left),
        )
    async with _running(app, jobs):
        yield


async def worker_jobs(app: web.Application) -> AsyncIterator[None]:
    """Every job but those its settings rule out (the cleanup context of ``teleconsult
    worker``); ``RUNNING_JOBS`` says each in one line."""
    settings = app[SETTINGS]
    jobs, skipped = [], []
    for job in JOBS:
        reason = job.not_in_worker(settings)
        if reason is None:
            jobs.append(job)
        else:
            skipped.append(f"{job.name}: not run here, {reason}")
            logger.warning("background job %s: not run here, %s", job.name, reason)
    async with _running(app, jobs, tuple(skipped)):
        yield
