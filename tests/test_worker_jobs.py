"""``BACKGROUND_JOBS=worker``: servers that only serve, and ``teleconsult worker`` processes
that run every background job (server/jobs.py).

A real server process and real worker processes on a database of their own, with the
payment providers' simulators in the test. The work is seeded as the jobs find it in
production: an expired document upload, a recording past its retention, a payment
whose callback was dropped, a queued FHIR Bulk export and a due notification.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
import yaml
from aiohttp.test_utils import TestClient

from teleconsult.core.errors import ConfigError
from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.notifications import store as outbox_store
from teleconsult.payments.simulators import Simulators
from teleconsult.recording.seal import MasterKey
from teleconsult.scheduling.records import NewNotification
from teleconsult.server.app import create_app
from teleconsult.server.jobs import JOBS, RUNNING_JOBS
from tests.conftest import settings_env
from tests.paymentskit import book, give_fee, invoice_of, start_sims
from tests.recordingkit import Lab
from tests.servers import ServerProcess, WorkerProcess
from tests.world import Account, bearer_at, clinic_people

REPO = Path(__file__).resolve().parent.parent
KEY = MasterKey(1, os.urandom(32))
IN_SERVER_FLAGS = ("NOTIFY_IN_SERVER", "PAYMENTS_RECONCILE_IN_SERVER", "FHIR_EXPORT_IN_SERVER")
KICK = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
# Fast periods, so that a few seconds of a server alone are many rounds it did not run.
FAST = {
    "RECORDING_SWEEP_SECONDS": "0.2",
    "PAYMENTS_POLL_INTERVAL": "0.2",
    "PAYMENTS_POLL_MAX_INTERVAL": "0.5",
    "FHIR_EXPORT_POLL_INTERVAL": "0.2",
    "FHIR_EXPORT_LEASE_SECONDS": "5",
    "NOTIFY_POLL_INTERVAL": "0.2",
    "NOTIFY_LEASE_SECONDS": "5",
    "LOG_LEVEL": "INFO",
}


# --- the setting ---------------------------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {"JWT_SECRET": "x" * 40, "TELECONSULT_DATA_DIR": str(tmp_path)}
    return base | {"DATABASE_URL": "postgresql://h/db"} | extra


def test_background_jobs_worker_takes_every_job_out_of_the_server(tmp_path: Path) -> None:
    default = load_settings(_env(tmp_path))
    assert default.background_jobs == "server"
    assert [job.in_server(default) for job in JOBS] == [True] * len(JOBS)
    moved = load_settings(_env(tmp_path, BACKGROUND_JOBS="worker"))
    assert moved.background_jobs == "worker"
    assert [job.in_server(moved) for job in JOBS] == [False] * len(JOBS)


def test_a_per_job_flag_still_wins_over_background_jobs(tmp_path: Path) -> None:
    kept = load_settings(_env(tmp_path, BACKGROUND_JOBS="worker", NOTIFY_IN_SERVER="true"))
    assert [job.name for job in JOBS if job.in_server(kept)] == ["notifications"]
    off = load_settings(_env(tmp_path, FHIR_EXPORT_IN_SERVER="false"))
    assert [job.name for job in JOBS if not job.in_server(off)] == ["FHIR export worker"]


def test_background_jobs_reads_a_file_and_names_itself_when_wrong(tmp_path: Path) -> None:
    secret = tmp_path / "jobs.txt"
    secret.write_text("worker\n", encoding="utf-8")
    assert load_settings(_env(tmp_path, BACKGROUND_JOBS_FILE=str(secret))).background_jobs == (
        "worker"
    )
    with pytest.raises(ConfigError, match="BACKGROUND_JOBS"):
        load_settings(_env(tmp_path, BACKGROUND_JOBS="both"))


def test_the_demo_payments_reconciler_stays_with_the_servers_simulators(tmp_path: Path) -> None:
    demo = load_settings(
        {"JWT_SECRET": "x" * 40, "TELECONSULT_DATA_DIR": str(tmp_path), "BACKGROUND_JOBS": "worker"}
    )
    assert demo.payments.demo
    assert [job.name for job in JOBS if job.in_server(demo)] == ["payments reconciler"]
    assert [job.name for job in JOBS if job.not_in_worker(demo)] == ["payments reconciler"]


async def test_a_server_runs_the_jobs_its_settings_keep_there(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    database_url: str,
    tmp_path: Path,
) -> None:
    env = settings_env(database_url, tmp_path)
    for name in IN_SERVER_FLAGS:
        env.pop(name)
    everything = await aiohttp_client(create_app(load_settings(env)))
    assert len(everything.app[RUNNING_JOBS]) == len(JOBS)
    nothing = await aiohttp_client(create_app(load_settings(env | {"BACKGROUND_JOBS": "worker"})))
    assert nothing.app[RUNNING_JOBS] == []


def test_compose_runs_the_jobs_in_a_worker_with_the_apps_settings() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
    app, worker = services["app"], services["worker"]
    assert worker["command"] == ["teleconsult", "worker"]
    assert app["environment"]["BACKGROUND_JOBS"] == "worker"
    for part in ("secrets", "volumes"):
        assert worker[part] == app[part], part
    # The app's settings, but not the owner role: the worker never migrates.
    assert app["environment"]["DATABASE_OWNER_URL"]
    assert worker["environment"] == app["environment"] | {"DATABASE_OWNER_URL": ""}


# --- a server and workers, as processes ---------------------------------------------------


@dataclass
class Work:
    """What the jobs are to do, by id."""

    uploads: list[UUID] = field(default_factory=list)
    recordings: list[UUID] = field(default_factory=list)
    payments: list[UUID] = field(default_factory=list)
    invoices: list[UUID] = field(default_factory=list)
    exports: list[UUID] = field(default_factory=list)
    notifications: list[int] = field(default_factory=list)


@dataclass
class Site:
    db: asyncpg.Pool
    root: Path
    server: ServerProcess
    sims: Simulators
    admins: list[Account]
    doctor: Account
    patient: Account
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self, name: str) -> WorkerProcess:
        env = {k: v for k, v in self.server.env.items() if k not in ("PORT", "HOST")}
        process = WorkerProcess(env, self.root / f"{name}.log")
        self.workers.append(process)
        return process

    async def headers(self, account: Account) -> dict[str, str]:
        return await bearer_at(self.server.base_url, account)

    async def seed(self, count: int) -> Work:
        """``count`` of each kind of work (exports: one per admin, up to ``count``)."""
        work = Work()
        lab = Lab(self.db, self.root, self.doctor, self.patient)  # blobs in root/recordings
        recordings = lab.service(KEY)
        patient = await self.headers(self.patient)
        async with aiohttp.ClientSession(self.server.base_url) as http:
            for _ in range(count):
                work.uploads.append(await self._expired_upload())
                n = len(work.recordings)
                work.recordings.append(await lab.recording(recordings, os.urandom(3000), n))
                appointment = await book(self.db, self.doctor, self.patient)
                invoice = await invoice_of(self.db, appointment)
                work.invoices.append(invoice)
                async with http.post(
                    f"/api/v1/invoices/{invoice}/payments",
                    json={"provider": "mpesa", "payer": "0708374149"},
                    headers=patient | {"Idempotency-Key": str(uuid.uuid4())},
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    work.payments.append(UUID((await resp.json())["id"]))
                due = datetime.now(UTC) - timedelta(minutes=1)
                await outbox_store.enqueue(
                    self.db, [NewNotification("reminder_1h", appointment, due, {"v": 1})]
                )
                work.notifications.append(
                    await self.db.fetchval(
                        "SELECT id FROM notification_outbox WHERE appointment_id = $1",
                        appointment,
                    )
                )
            for admin in self.admins[:count]:
                async with http.get(
                    "/fhir/R4/$export", headers=await self.headers(admin) | KICK
                ) as resp:
                    assert resp.status == 202, await resp.text()
                    work.exports.append(UUID(resp.headers["Content-Location"].rsplit("/", 1)[1]))
        await self.db.execute(
            "UPDATE recordings SET expires_at = now() - interval '1 minute' WHERE id = ANY($1)",
            work.recordings,
        )
        return work

    async def _expired_upload(self) -> UUID:
        upload_id: UUID = await self.db.fetchval(
            """
            INSERT INTO document_uploads (id, clinic_id, patient_id, title_ct, category,
                content_type, size, sha256, created_by, expires_at)
            VALUES ($1, $2, $3, '\\x00', 'other', 'application/pdf', 10, $4, $5,
                    now() - interval '1 second')
            RETURNING id
            """,
            uuid.uuid4(),
            self.patient.clinic_id,
            self.patient.user_id,
            os.urandom(32),
            self.doctor.user_id,
        )
        return upload_id

    async def state(self, work: Work) -> dict[str, list[Any]]:
        """Where each piece of work stands."""
        db = self.db
        return {
            "uploads": [
                r["id"]
                for r in await db.fetch(
                    "SELECT id FROM document_uploads WHERE id = ANY($1)", work.uploads
                )
            ],
            "recordings": [
                r["state"]
                for r in await db.fetch(
                    "SELECT state FROM recordings WHERE id = ANY($1)", work.recordings
                )
            ],
            "payments": [
                (r["status"], r["polls"])
                for r in await db.fetch(
                    "SELECT status, polls FROM payments WHERE id = ANY($1)", work.payments
                )
            ],
            "exports": [
                (r["status"], r["attempts"])
                for r in await db.fetch(
                    "SELECT status, attempts FROM fhir_export_jobs WHERE id = ANY($1)",
                    work.exports,
                )
            ],
            "notifications": [
                (r["sent_at"] is not None, r["attempts"])
                for r in await db.fetch(
                    "SELECT sent_at, attempts FROM notification_outbox WHERE id = ANY($1)",
                    work.notifications,
                )
            ],
        }

    async def all_done(self, work: Work, *, within: float = 90) -> dict[str, list[Any]]:
        async with asyncio.timeout(within):
            while True:
                state = await self.state(work)
                if (
                    not state["uploads"]
                    and set(state["recordings"]) == {"expired"}
                    and {status for status, _ in state["payments"]} == {"succeeded"}
                    and {status for status, _ in state["exports"]} == {"completed"}
                    and {sent for sent, _ in state["notifications"]} == {True}
                ):
                    return state
                await asyncio.sleep(0.1)

    async def audited(self, action: str, ids: list[UUID]) -> dict[str, int]:
        """How many audit events of ``action`` each object has (intake and chain)."""
        rows = await self.db.fetch(
            """
            SELECT object_id, count(*) AS n FROM (
                SELECT object_id FROM audit_intake WHERE action = $1
                UNION ALL SELECT object_id FROM audit_log WHERE action = $1
            ) a WHERE object_id = ANY($2::text[]) GROUP BY object_id
            """,
            action,
            [str(i) for i in ids],
        )
        return {r["object_id"]: r["n"] for r in rows}


@pytest.fixture
async def site(fresh_db: str, tmp_path: Path) -> AsyncIterator[Site]:
    sim_server, sims = await start_sims()
    for sim in sims.all().values():
        sim.behaviour.drop_rate = 1.0  # no callbacks: only a reconciler settles a payment
    sim_url = str(sim_server.make_url("")).rstrip("/")
    people = await clinic_people(
        fresh_db, Role.ADMIN, Role.ADMIN, Role.ADMIN, Role.DOCTOR, Role.PATIENT, name="Jobs"
    )
    *admins, doctor, patient = people
    server = ServerProcess(
        fresh_db,
        tmp_path,
        BACKGROUND_JOBS="worker",
        RECORDING_DIR=str(tmp_path / "recordings"),
        RECORDING_KEYS=f"{KEY.version}:{base64.b64encode(KEY.key).decode()}",
        FHIR_EXPORT_DIR=str(tmp_path / "exports"),
        **FAST,
        **sims.env(sim_url),
    )
    for name in IN_SERVER_FLAGS:  # BACKGROUND_JOBS alone decides
        server.env.pop(name)
    server.env["PAYMENTS_CALLBACK_BASE_URL"] = server.base_url
    db = await asyncpg.create_pool(fresh_db, min_size=1, max_size=4)
    site = Site(db, tmp_path, server, sims, admins, doctor, patient)
    try:
        await give_fee(db, doctor)
        await server.start()
        yield site
    finally:
        for worker in site.workers:
            await worker.kill()
        await server.stop()
        await db.close()
        await sim_server.close()
        await sims.close()


async def test_the_server_alone_runs_no_job_and_the_worker_runs_each(site: Site) -> None:
    await site.server.log_shows("background jobs left to `teleconsult worker`")
    work = await site.seed(1)
    # Many rounds of every job's period pass with the server alone.
    await asyncio.sleep(3)
    untouched = await site.state(work)
    assert untouched == {
        "uploads": work.uploads,
        "recordings": ["ready"],
        "payments": [("pending", 0)],
        "exports": [("queued", 0)],
        "notifications": [(False, 0)],
    }
    assert "background job:" not in site.server.log_text()

    worker = site.worker("worker")
    await worker.start()
    lines = worker.text()
    assert f"teleconsult worker: {len(JOBS)} background jobs" in lines, lines
    for name in ("notifications:", "payments reconciler:", "FHIR Bulk export worker:"):
        assert f"\n  {name}" in lines, lines
    for name in ("document upload sweeper:", "recording retention sweeper:"):
        assert f"\n  {name}" in lines, lines
    done = await site.all_done(work)
    assert done["exports"] == [("completed", 1)]
    assert done["notifications"] == [(True, 1)]
    assert (
        await site.db.fetchval("SELECT status FROM invoices WHERE id = $1", work.invoices[0])
        == "paid"
    )
    # The server serves what the worker wrote (a shared FHIR_EXPORT_DIR).
    admin = await site.headers(site.admins[0])
    async with aiohttp.ClientSession(site.server.base_url) as http:
        async with http.get(f"/fhir/R4/$export-status/{work.exports[0]}", headers=admin) as resp:
            assert resp.status == 200, await resp.text()
            manifest = await resp.json()
        patients = [o for o in manifest["output"] if o["type"] == "Patient"]
        async with http.get(
            patients[0]["url"].split(site.server.base_url, 1)[1], headers=admin
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert str(site.patient.user_id) in await resp.text()

    assert await worker.terminate() == 0, worker.text()
    assert worker.text().rstrip().endswith("stopped"), worker.text()


async def test_two_workers_do_each_piece_of_work_exactly_once(site: Site) -> None:
    work = await site.seed(3)
    first, second = site.worker("first"), site.worker("second")
    await asyncio.gather(first.start(), second.start())
    done = await site.all_done(work)
    assert [attempts for _, attempts in done["exports"]] == [1, 1, 1]
    assert [attempts for _, attempts in done["notifications"]] == [1, 1, 1]
    uploads = await site.audited("document.upload_expire", work.uploads)
    assert uploads == {str(i): 1 for i in work.uploads}
    recordings = await site.audited("recording.expire", work.recordings)
    assert recordings == {str(i): 1 for i in work.recordings}
    # One credit per invoice: no payment was applied twice.
    credits = await site.db.fetch(
        "SELECT invoice_id, count(*) AS n FROM ledger_transactions "
        "WHERE kind = 'payment' AND invoice_id = ANY($1) GROUP BY invoice_id",
        work.invoices,
    )
    assert {r["invoice_id"]: r["n"] for r in credits} == dict.fromkeys(work.invoices, 1)
    assert await asyncio.gather(first.terminate(), second.terminate()) == [0, 0]
