"""Bulk Data $export (HL7 Bulk Data Access IG v2) against real PostgreSQL and real files.

Most tests turn the in-server worker off (FHIR_EXPORT_IN_SERVER=false) and run a
worker's ``run_once`` themselves, so a job is seen queued, then finished, in a
known order. The restart test runs a real server process and SIGKILLs it while
a job is half written.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.fhir.export import ExportWorker
from teleconsult.fhir.search_routes import FHIR
from teleconsult.server.app import AUDIT, POOL, SETTINGS
from tests.conftest import StartServer
from tests.fhirseed import seed_patients
from tests.fhirvalidate import assert_outcome
from tests.servers import ServerProcess
from tests.world import (
    Account,
    Tenant,
    bearer_at,
    clinic_people,
    login,
    make_tenant,
    make_user,
)

Client = TestClient[Any, Any]
KICK = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
QUIET = {"FHIR_EXPORT_IN_SERVER": "false", "FHIR_EXPORT_RETRY_AFTER": "1"}


def _path(url: str) -> str:
    return url[url.index("/fhir/") :]


def _worker(client: Client) -> ExportWorker:
    app = client.app
    return ExportWorker(
        pool=app[POOL],
        audit=app[AUDIT],
        tables=app[FHIR].tables,
        settings=app[SETTINGS].fhir,
        crypt=app[FHIR].crypt,
    )


async def _kick(client: Client, who: Account, path: str = "/fhir/R4/$export", **params: str) -> str:
    resp = await client.get(path, params=params or None, headers={**who.headers, **KICK})
    assert resp.status == 202, await resp.text()
    assert await resp.read() == b""
    return _path(resp.headers["Content-Location"])


async def _manifest(client: Client, who: Account, status: str) -> dict[str, Any]:
    for _ in range(60):
        resp = await client.get(status, headers=who.headers)
        if resp.status == 200:
            body: dict[str, Any] = await resp.json()
            return body
        assert resp.status == 202, await resp.text()
        await asyncio.sleep(int(resp.headers["Retry-After"]))
    raise AssertionError("the export did not finish")


async def _files(client: Client, who: Account, manifest: dict[str, Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for item in manifest["output"]:
        resp = await client.get(_path(item["url"]), headers=who.headers)
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/fhir+ndjson"
        lines = [json.loads(line) for line in (await resp.text()).splitlines() if line]
        assert len(lines) == item["count"]
        assert all(r["resourceType"] == item["type"] for r in lines)
        found[item["type"]] = lines
    return found


async def _world(start_server: StartServer, **env: str) -> tuple[Client, Tenant]:
    client = await start_server(**{**QUIET, **env})
    # The session's database is shared: other tests (the FHIR authorization matrix) leave
    # queued jobs behind, for clinics whose field keys their own servers held. The worker
    # these tests run by hand takes the oldest unfinished job first, so clear them.
    await client.app[POOL].execute(
        """
        UPDATE fhir_export_jobs
        SET status = 'cancelled', lease_owner = NULL, lease_until = NULL,
            finished_at = COALESCE(finished_at, now()), updated_at = now()
        WHERE status IN ('queued', 'running')
        """
    )
    tenant = await make_tenant(client.app[POOL], client, name="Export")
    return client, tenant


async def test_kick_off_needs_the_bulk_headers_and_known_parameters(
    start_server: StartServer,
) -> None:
    client, tenant = await _world(start_server)
    admin = tenant[Role.ADMIN].headers
    url = "/fhir/R4/$export"
    no_prefer = await client.get(url, headers={**admin, "Accept": "application/fhir+json"})
    await assert_outcome(no_prefer, 400, "validation_failed")
    no_accept = await client.get(url, headers={**admin, "Prefer": "respond-async"})
    await assert_outcome(no_accept, 400, "validation_failed")
    for params in (
        {"_outputFormat": "text/csv"},
        {"_type": "Observation"},
        {"_type": "Patient,Bogus"},
        {"_since": "last week"},
        {"_since": "2024-01-01"},  # a date, not an instant
        {"_typeFilter": "Patient?active=true"},
    ):
        resp = await client.get(url, params=params, headers={**admin, **KICK})
        await assert_outcome(resp, 400, "validation_failed")
    # Patient-level exports are the patients' compartments: no directory types.
    resp = await client.get(
        "/fhir/R4/Patient/$export", params={"_type": "Practitioner"}, headers={**admin, **KICK}
    )
    await assert_outcome(resp, 400, "validation_failed")
    for role in (Role.PATIENT, Role.NURSE, Role.RECEPTIONIST):
        resp = await client.get(url, headers={**tenant[role].headers, **KICK})
        await assert_outcome(resp, 403, "forbidden")
    await assert_outcome(await client.get(url, headers=KICK), 401, "unauthenticated")
    pending = await client.app[POOL].fetchval(
        "SELECT count(*) FROM fhir_export_jobs WHERE clinic_id = $1", tenant.clinic_id
    )
    assert pending == 0  # nothing refused was queued


async def test_status_shows_progress_refuses_fast_polls_then_gives_the_manifest(
    start_server: StartServer,
) -> None:
    client, tenant = await _world(start_server)
    admin = tenant[Role.ADMIN]
    await seed_patients(client.app[POOL], tenant.clinic_id, tenant[Role.DOCTOR].user_id, 30)
    status = await _kick(client, admin, _outputFormat="application/fhir+ndjson")
    first = await client.get(status, headers=admin.headers)
    assert first.status == 202, await first.text()
    assert first.headers["X-Progress"] == "0 of 6 resource types done"
    assert first.headers["Retry-After"] == "1"
    progress = await first.json(content_type=None)
    assert progress["resourceType"] == "OperationOutcome"
    assert progress["issue"][0]["code"] == "informational"
    again = await client.get(status, headers=admin.headers)
    await assert_outcome(again, 429, "rate_limited")
    assert again.headers["Retry-After"] == "1"
    assert await _worker(client).run_once() is True
    assert await _worker(client).run_once() is False  # nothing left to run
    await asyncio.sleep(1.05)
    manifest = await _manifest(client, admin, status)
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith("/fhir/R4/$export?_outputFormat=application/fhir%2Bndjson")
    assert manifest["error"] == []
    assert manifest["transactionTime"].endswith("Z")
    types = [item["type"] for item in manifest["output"]]
    assert types == [
        "Organization",
        "Practitioner",
        "Patient",
        "Appointment",
        "Encounter",
        "Invoice",  # admins read the clinic's invoices (issue 15)
    ]
    files = await _files(client, admin, manifest)
    assert len(files["Patient"]) == 32 and len(files["Appointment"]) == 30
    assert len(files["Invoice"]) == 30  # one per booking: the doctor has a fee
    assert [o["id"] for o in files["Organization"]] == [str(tenant.clinic_id)]
    # The manifest and the files are the requester's alone, even within the clinic.
    colleague = await make_user(client.app[POOL], tenant.clinic_id, Role.ADMIN, tag="admin2")
    colleague = await login(client, colleague)
    await assert_outcome(await client.get(status, headers=colleague.headers), 404, "not_found")
    first_file = _path(manifest["output"][0]["url"])
    await assert_outcome(await client.get(first_file, headers=colleague.headers), 404, "not_found")
    await assert_outcome(await client.get(first_file), 401, "unauthenticated")
    downloads = await client.app[POOL].fetchval(
        "SELECT count(*) FROM (SELECT action, actor_id FROM audit_intake UNION ALL "
        "SELECT action, actor_id FROM audit_log) a "
        "WHERE action = 'fhir.export.download' AND actor_id = $1",
        admin.user_id,
    )
    assert downloads == 6


async def test_type_and_since_narrow_the_export(start_server: StartServer) -> None:
    client, tenant = await _world(start_server)
    pool = client.app[POOL]
    admin = tenant[Role.ADMIN]
    seeded = await seed_patients(pool, tenant.clinic_id, tenant[Role.DOCTOR].user_id, 12)
    await pool.execute(
        "UPDATE appointments SET updated_at = '2020-01-01T00:00:00Z' WHERE patient_id = ANY($1)",
        seeded.patient_ids[:8],
    )
    await pool.execute(
        "UPDATE users SET updated_at = '2020-01-01T00:00:00Z' WHERE id = ANY($1)",
        seeded.patient_ids[:10],
    )
    status = await _kick(client, admin, _type="Appointment,Patient", _since="2024-01-01T00:00:00Z")
    await _worker(client).run_once()
    files = await _files(client, admin, await _manifest(client, admin, status))
    assert list(files) == ["Patient", "Appointment"]  # in the server's order
    assert tenant.other_patient is not None
    assert {p["id"] for p in files["Patient"]} == {str(p) for p in seeded.patient_ids[10:]} | {
        str(tenant[Role.PATIENT].user_id),
        str(tenant.other_patient.user_id),
    }
    assert {a["participant"][1]["actor"]["reference"] for a in files["Appointment"]} == {
        f"Patient/{p}" for p in seeded.patient_ids[8:]
    }


async def test_a_doctors_export_holds_only_their_panel_and_groups_are_checked(
    start_server: StartServer,
) -> None:
    client, tenant = await _world(start_server)
    pool = client.app[POOL]
    doctor, admin = tenant[Role.DOCTOR], tenant[Role.ADMIN]
    colleague = await make_user(pool, tenant.clinic_id, Role.DOCTOR, tag="colleague")
    mine = await seed_patients(pool, tenant.clinic_id, doctor.user_id, 12)
    theirs = await seed_patients(
        pool, tenant.clinic_id, colleague.user_id, 6, start=datetime(2027, 2, 1, tzinfo=UTC)
    )
    # records.access: confirmed, in-progress and completed recent appointments are a
    # basis (fhirseed); requested, cancelled and no-show ones are not.
    panel = {str(p) for i, p in enumerate(mine.patient_ids) if i % 6 in (0, 1, 2)}
    status = await _kick(client, doctor)
    await _worker(client).run_once()
    files = await _files(client, doctor, await _manifest(client, doctor, status))
    assert {p["id"] for p in files["Patient"]} == panel
    # Of the panel's patients, their appointments with this doctor; nothing of the others.
    assert {a["id"] for a in files["Appointment"]} == {
        str(a) for i, a in enumerate(mine.appointment_ids) if i % 6 in (0, 1, 2)
    }
    assert not {a["id"] for a in files["Appointment"]} & {str(a) for a in theirs.appointment_ids}
    # Group = a doctor's panel, for that doctor or an admin; = the clinic, for admins.
    group = await _kick(client, admin, f"/fhir/R4/Group/{doctor.user_id}/$export")
    await _worker(client).run_once()
    files = await _files(client, admin, await _manifest(client, admin, group))
    assert list(files) == ["Patient", "Appointment", "Encounter", "Invoice"]
    assert {p["id"] for p in files["Patient"]} == panel
    # The admin's invoices of a doctor's Group: the panel's alone (issue 15).
    assert {i["subject"]["reference"] for i in files["Invoice"]} == {f"Patient/{p}" for p in panel}
    clinic = await _kick(client, admin, f"/fhir/R4/Group/{tenant.clinic_id}/$export")
    await _worker(client).run_once()
    files = await _files(client, admin, await _manifest(client, admin, clinic))
    assert len(files["Patient"]) == 12 + 6 + 2
    for path in (
        f"/fhir/R4/Group/{tenant.clinic_id}/$export",
        f"/fhir/R4/Group/{colleague.user_id}/$export",
        f"/fhir/R4/Group/{admin.user_id}/$export",
        f"/fhir/R4/Group/{UUID(int=7)}/$export",
    ):
        resp = await client.get(path, headers={**doctor.headers, **KICK})
        await assert_outcome(resp, 404, "not_found")


async def test_delete_cancels_a_job_and_removes_its_files(start_server: StartServer) -> None:
    client, tenant = await _world(start_server)
    admin = tenant[Role.ADMIN]
    export_dir: Path = client.app[SETTINGS].fhir.export_dir
    await seed_patients(client.app[POOL], tenant.clinic_id, tenant[Role.DOCTOR].user_id, 5)
    queued = await _kick(client, admin)
    resp = await client.delete(queued, headers=admin.headers)
    assert resp.status == 202
    assert (await resp.json(content_type=None))["resourceType"] == "OperationOutcome"
    assert await _worker(client).run_once() is False  # a cancelled job is never run
    await assert_outcome(await client.get(queued, headers=admin.headers), 404, "not_found")
    await assert_outcome(await client.delete(queued, headers=admin.headers), 404, "not_found")

    done = await _kick(client, admin)
    await _worker(client).run_once()
    manifest = await _manifest(client, admin, done)
    job_id = done.rsplit("/", 1)[1]
    assert len(list((export_dir / job_id).iterdir())) == 6  # five types and the invoices (issue 15)
    assert (await client.delete(done, headers=admin.headers)).status == 202
    assert not (export_dir / job_id).exists()
    await assert_outcome(await client.get(done, headers=admin.headers), 404, "not_found")
    resp = await client.get(_path(manifest["output"][0]["url"]), headers=admin.headers)
    await assert_outcome(resp, 404, "not_found")
    assert (
        await client.app[POOL].fetchval(
            "SELECT count(*) FROM fhir_export_files WHERE job_id = $1", UUID(job_id)
        )
        == 0
    )


async def test_at_most_three_exports_run_at_once_per_requester(start_server: StartServer) -> None:
    client, tenant = await _world(start_server)
    admin = tenant[Role.ADMIN]
    for _ in range(3):
        await _kick(client, admin)
    resp = await client.get("/fhir/R4/$export", headers={**admin.headers, **KICK})
    await assert_outcome(resp, 429, "rate_limited")
    assert "Retry-After" in resp.headers


async def test_a_job_survives_a_killed_server_and_resumes_where_it_stopped(
    fresh_db: str, tmp_path: Path
) -> None:
    admin, doctor = await clinic_people(fresh_db, Role.ADMIN, Role.DOCTOR, name="Resume")
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    server = ServerProcess(
        fresh_db,
        tmp_path,
        FHIR_EXPORT_IN_SERVER="true",
        FHIR_EXPORT_LEASE_SECONDS="2",
        FHIR_EXPORT_POLL_INTERVAL="0.1",
        FHIR_EXPORT_RETRY_AFTER="1",
        FHIR_EXPORT_MAX_ROWS_PER_SECOND="1500",
    )
    try:
        seeded = await seed_patients(pool, admin.clinic_id, doctor.user_id, 1500)
        await server.start()
        headers = await bearer_at(server.base_url, admin)
        async with aiohttp.ClientSession(server.base_url) as http:
            async with http.get("/fhir/R4/$export", headers={**headers, **KICK}) as resp:
                assert resp.status == 202, await resp.text()
                status = _path(resp.headers["Content-Location"])
            job_id = UUID(status.rsplit("/", 1)[1])
            for _ in range(3000):  # until some files are written, not all
                if await pool.fetchval(
                    "SELECT count(*) FROM fhir_export_files WHERE job_id = $1", job_id
                ):
                    break
                await asyncio.sleep(0.02)
            server.kill()
            job = await pool.fetchrow("SELECT * FROM fhir_export_jobs WHERE id = $1", job_id)
            kept = await pool.fetch(
                "SELECT seq, created_at FROM fhir_export_files WHERE job_id = $1", job_id
            )
            assert job["status"] == "running" and job["attempts"] == 1
            assert 1 <= len(kept) < 6, "the job must be cut in the middle"
            await server.start()
            manifest: dict[str, Any] = {}
            async with asyncio.timeout(90):
                while not manifest:
                    async with http.get(status, headers=headers) as resp:
                        if resp.status == 200:
                            manifest = await resp.json()
                        else:
                            assert resp.status in (202, 429), await resp.text()
                            await asyncio.sleep(1.0)
            counts = {}
            for item in manifest["output"]:
                async with http.get(_path(item["url"]), headers=headers) as resp:
                    assert resp.status == 200
                    ids = [json.loads(line)["id"] for line in (await resp.text()).splitlines()]
                assert len(ids) == len(set(ids)) == item["count"]
                counts[item["type"]] = item["count"]
        job = await pool.fetchrow("SELECT * FROM fhir_export_jobs WHERE id = $1", job_id)
        assert job["status"] == "completed" and job["attempts"] == 2
        after = await pool.fetch(
            "SELECT seq, created_at FROM fhir_export_files WHERE job_id = $1", job_id
        )
        assert {(r["seq"], r["created_at"]) for r in kept} <= {
            (r["seq"], r["created_at"]) for r in after
        }  # files finished before the kill were kept, not written again
        assert counts["Patient"] == len(seeded.patient_ids)
        assert counts["Appointment"] == len(seeded.appointment_ids)
        assert "already written; kept" in server.log_text()
    finally:
        server.kill()
        await pool.close()
