"""The ``teleconsult`` command line: serve, migrate, audit verify, clinic create, loadtest,
impair, soak."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

from teleconsult.accounts.bootstrap import ensure_first_clinic, read_credentials
from teleconsult.accounts.routes import ACCOUNTS
from teleconsult.api import headers
from teleconsult.audit import format_report, parse_public_key, verify_database
from teleconsult.core.db import DatabaseUrls
from teleconsult.core.embedded_pg import EmbeddedPostgres
from teleconsult.core.errors import ConfigError, TeleconsultError
from teleconsult.core.logging import JsonAccessLogger, configure_logging
from teleconsult.core.metrics import count_open_connections
from teleconsult.core.migrations import migrate_database
from teleconsult.core.settings import Settings, load_settings
from teleconsult.loadtest import cli as loadtest
from teleconsult.loadtest import impair, soak
from teleconsult.recording.routes import RECORDINGS  # recordings (issue 13, part R)
from teleconsult.recording.upkeep import RotationProgress  # recordings (issue 13, R)
from teleconsult.records.fieldcrypt import FieldCrypt  # records (issue 14, part R)
from teleconsult.records.rotate import rotate as rotate_records  # records (issue 14, R)
from teleconsult.server.app import METRICS, create_app, create_service_app, create_worker_app
from teleconsult.server.jobs import RUNNING_JOBS

logger = logging.getLogger("teleconsult")

# The API's rules for a new account (api/models.py: Email, Password).
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MIN_PASSWORD, MAX_PASSWORD = 10, 256


def _say(text: str) -> None:
    print(text, flush=True)


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then drain connections and stop cleanly."""
    headers.hide_server_banner()
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        access_log_class=JsonAccessLogger,
        shutdown_timeout=settings.http.shutdown_timeout,
        handle_signals=False,
    )
    await runner.setup()
    try:
        app[METRICS].set_connection_counter(lambda: count_open_connections(runner))
        first = await ensure_first_clinic(app[ACCOUNTS], settings.data_dir)
        site = web.TCPSite(runner, settings.http.host, settings.http.port)
        await site.start()
        metrics_runner = await _metrics_listener(app, settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        host = settings.http.host
        shown = f"[{host}]" if ":" in host else host
        _say(f"teleconsult listening on http://{shown}:{settings.http.port}")
        _say(f"  API docs: http://{shown}:{settings.http.port}/api/v1/openapi.json")
        if settings.database.url is None:
            _say(f"  database: embedded PostgreSQL in {settings.data_dir / 'pg'}")
        if metrics_runner is not None:
            _say(
                f"  metrics: http://{settings.http.metrics_host}:{settings.http.metrics_port}/metrics"
            )
        if first.credentials is not None and first.created:
            creds = read_credentials(first.credentials)
            _say(
                f"  sign in: POST /api/v1/auth/login with email {creds.get('email')} and "
                f"password {creds.get('password')} (kept in {first.credentials}; delete the "
                "file once you have changed the password)"
            )
        elif first.credentials is not None:
            # Shown once, on the first start; later starts only say where it is.
            _say(
                f"  the first admin's password is still in {first.credentials}; delete the "
                "file once you have changed the password"
            )
        _say("  press Ctrl-C to stop")
        try:
            await stop.wait()
        finally:
            if metrics_runner is not None:
                await metrics_runner.cleanup()
        _say("stopping: draining connections")
    finally:
        await runner.cleanup()
    _say("stopped")


async def _metrics_listener(app: web.Application, settings: Settings) -> web.AppRunner | None:
    """``/metrics`` on a listener of its own (METRICS_PORT), not on the public one."""
    port = settings.http.metrics_port
    if port is None:
        return None
    runner = web.AppRunner(
        app[METRICS].app(settings.http.metrics_token), access_log=None, handle_signals=False
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.http.metrics_host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


@contextlib.asynccontextmanager
async def _database_urls(settings: Settings) -> AsyncIterator[DatabaseUrls]:
    database = settings.database
    if database.url is not None:
        yield DatabaseUrls(database.url, database.owner_url, database.runtime_role)
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    urls = await embedded.start()
    try:
        yield urls
    finally:
        await embedded.stop()


@contextlib.asynccontextmanager
async def _database_dsn(settings: Settings) -> AsyncIterator[str]:
    """The runtime role's URL: enough for `audit verify` (it reads) and key rotation."""
    async with _database_urls(settings) as urls:
        yield urls.runtime


async def run_migrate(settings: Settings) -> int:
    """Migrate as DATABASE_OWNER_URL's role and grant the runtime role, when set."""
    async with _database_urls(settings) as urls:
        applied = await migrate_database(urls)
    _say(f"applied migrations: {applied}" if applied else "database is up to date")
    return 0


def _trusted_keys(settings: Settings, given: list[str] | None) -> list[bytes]:
    """The keys named on the command line, else this installation's own public key(s)."""
    if given:
        return [parse_public_key(text) for text in given]
    audit = settings.audit
    keys = [audit.public_key]
    if audit.public_key_file is not None and audit.public_key_file.exists():
        keys.append(parse_public_key(audit.public_key_file.read_text(encoding="ascii")))
    return list(dict.fromkeys(keys))


async def run_audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    """Check the chain and its signed checkpoints; 1 when anything is wrong."""
    try:
        keys = _trusted_keys(settings, args.public_key)
    except ValueError as exc:
        print(f"teleconsult: --public-key: {exc}", file=sys.stderr)
        return 2
    if args.checkpoints:
        files = [Path(name) for name in args.checkpoints]
    else:
        default = settings.audit.checkpoint_file
        files = [default] if default is not None and default.exists() else []
    async with _database_dsn(settings) as dsn:
        report = await verify_database(dsn, trusted_keys=keys, checkpoint_files=files)
    _say(format_report(report))
    return 0 if report.ok else 1


@contextlib.asynccontextmanager
async def _service_app(
    settings: Settings, make: Callable[[Settings], web.Application] = create_service_app
) -> AsyncIterator[web.Application]:
    """The services without HTTP (``make``), started and stopped as a server would.

    Frozen first: aiohttp only sends the startup signal of a frozen application
    (``app.startup()`` on a fresh one failed with "Cannot send non-frozen signal").
    """
    app = make(settings)
    app.freeze()
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()
        await app.cleanup()


def _check_new_admin(email: str, password: str | None) -> str | None:
    """What is wrong with the admin's e-mail or password, as the API would say it."""
    if not _EMAIL.fullmatch(email.strip()) or len(email.strip()) > 254:
        return "--admin-email: not an e-mail address"
    if password is not None and not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        return f"--admin-password: must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
    return None


async def run_clinic_create(settings: Settings, args: argparse.Namespace) -> int:
    problem = _check_new_admin(args.admin_email, args.admin_password)
    if problem is not None:
        print(f"teleconsult: {problem}", file=sys.stderr)
        return 2
    password = args.admin_password or secrets.token_urlsafe(15)
    async with _service_app(settings) as app:
        clinic, admin = await app[ACCOUNTS].create_clinic(
            name=args.name,
            timezone=args.timezone,
            admin_email=args.admin_email.strip(),
            admin_password=password,
            admin_name=args.admin_name,
        )
    _say(f"clinic {clinic.id} created; admin {admin.email}")
    if not args.admin_password:
        _say(f"admin password: {password}")
    return 0


async def run_worker_command(settings: Settings) -> int:
    """Run every background job (server/jobs.py) until SIGINT/SIGTERM, then stop them
    cleanly: what a job holds unfinished goes back to the others by its lease."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _service_app(settings, create_worker_app) as app:
        lines = app[RUNNING_JOBS]
        _say(f"teleconsult worker: {len(lines)} background jobs")
        for line in lines:
            _say(f"  {line}")
        _say("  press Ctrl-C to stop")
        await stop.wait()
        _say("stopping: letting the jobs finish what they hold")
    _say("stopped")
    return 0


# --- recordings (issue 13, part R) ---
async def run_recordings(settings: Settings, args: argparse.Namespace) -> int:
    """``rotate-key``: re-wrap every recording's data key under the newest master key
    (resumable, no media re-encrypted); ``sweep``: expire what is past retention now."""
    async with _service_app(settings) as app:
        recordings = app[RECORDINGS]
        if args.recordings_command == "sweep":
            total = 0
            while swept := await recordings.sweep_expired(limit=50):
                total += swept
                _say(f"expired {total} recordings")
            _say(f"done: {total} recordings expired")
            return 0
        current = recordings.keys.current.version
        _say(f"re-wrapping data keys under master key version {current}")

        def progress(step: RotationProgress) -> None:
            share = f" ({100 * step.done // step.total}%)" if step.total else ""
            _say(f"  {step.done}/{step.total} recordings{share}")

        report = await recordings.rotate(batch=args.batch, progress=progress)
    left = {v: n for v, n in report.by_version.items() if v != report.current_version}
    _say(f"done: {report.rewrapped} re-wrapped, {report.failed} failed")
    if left:
        listing = ", ".join(f"version {v}: {n}" for v, n in sorted(left.items()))
        _say(f"still under older keys: {listing}; keep those keys and run again")
        return 1
    old = [v for v in recordings.keys.versions if v != report.current_version]
    if old:
        _say(f"no recording uses master key versions {old} any more: they may be removed")
    return 0


def _recordings_parser(sub: Any) -> None:
    recordings = sub.add_parser("recordings", help="recordings sealed at rest")
    recordings_sub = recordings.add_subparsers(dest="recordings_command", required=True)
    rotate = recordings_sub.add_parser(
        "rotate-key", help="re-wrap every data key under the newest master key (resumable)"
    )
    rotate.add_argument("--batch", type=int, default=50, help="recordings per transaction")
    recordings_sub.add_parser("sweep", help="expire the recordings past retention now")


# --- end recordings (issue 13, part R) ---


# --- records (issue 14, part R) ---
def _records_parser(sub: Any) -> None:
    records = sub.add_parser("records", help="patient record tools")
    records_sub = records.add_subparsers(dest="records_command", required=True)
    rotate = records_sub.add_parser(
        "rotate-key",
        help="new data keys under the newest RECORDS_KEYS master key; re-encrypt every "
        "encrypted record field (docs/records.md)",
    )
    rotate.add_argument("--clinic", type=UUID, help="one clinic only (default: every clinic)")


async def run_records_rotate(settings: Settings, args: argparse.Namespace) -> int:
    crypt = FieldCrypt(dict(settings.records.master_keys))
    async with _database_dsn(settings) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await rotate_records(conn, crypt, clinic_id=args.clinic, say=_say)
        finally:
            await conn.close()
    return 0


# --- end records ---


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="teleconsult", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the server")
    sub.add_parser("migrate", help="apply database migrations")
    sub.add_parser(
        "worker",
        help="run every background job (notifications, payments reconciler, FHIR exports, "
        "sweepers); see BACKGROUND_JOBS",
    )
    audit = sub.add_parser("audit", help="audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the audit trail's hash chain and its signed checkpoints"
    )
    verify.add_argument(
        "--public-key",
        action="append",
        metavar="HEX",
        help="trust checkpoints signed by this Ed25519 public key (64 hex characters; "
        "repeat for several); default: this installation's own key",
    )
    verify.add_argument(
        "--checkpoints",
        action="append",
        metavar="FILE",
        help="a checkpoint file to check against the database (repeat for several); "
        "default: AUDIT_CHECKPOINT_FILE",
    )
    clinic = sub.add_parser("clinic", help="clinic administration")
    clinic_sub = clinic.add_subparsers(dest="clinic_command", required=True)
    create = clinic_sub.add_parser("create", help="create a clinic with its first admin")
    create.add_argument("--name", required=True)
    create.add_argument("--timezone", default="UTC")
    create.add_argument("--admin-email", required=True)
    create.add_argument("--admin-name", default="Clinic Admin")
    create.add_argument("--admin-password", help="default: generated and printed")
    loadtest.add_parser(sub)
    impair.add_parser(sub)
    soak.add_parser(sub)
    _recordings_parser(sub)  # recordings (issue 13, part R)
    _records_parser(sub)  # records (issue 14, part R)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "loadtest":  # a client of some server: no server settings
        return loadtest.main(args)
    if args.command == "impair":
        return impair.main(args)
    if args.command == "soak":  # starts servers of its own, with settings of its own
        return soak.main(args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"teleconsult: invalid setting {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    try:
        if args.command == "serve":
            asyncio.run(serve(settings))
            return 0
        if args.command == "worker":
            return asyncio.run(run_worker_command(settings))
        if args.command == "migrate":
            return asyncio.run(run_migrate(settings))
        if args.command == "audit":
            return asyncio.run(run_audit_verify(settings, args))
        if args.command == "records":  # records (issue 14, part R)
            return asyncio.run(run_records_rotate(settings, args))
        if args.command == "recordings":  # recordings (issue 13, part R)
            return asyncio.run(run_recordings(settings, args))
        if args.command == "clinic":
            return asyncio.run(run_clinic_create(settings, args))
    except TeleconsultError as exc:
        logger.error("%s", exc)
        print(f"teleconsult: {exc}", file=sys.stderr)
        return 1
    return 2
