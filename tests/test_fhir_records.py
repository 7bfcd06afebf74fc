"""FHIR R4 views of the encrypted records and of invoices, over HTTP, real PostgreSQL.

Condition, AllergyIntolerance, MedicationRequest, MedicationStatement,
DocumentReference (issue 14) and Invoice (issue 15): read, search, $everything and
who sees what. R4 validity itself is checked by Medplum in test_fhir_validate.py.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.records.fieldcrypt import FieldCrypt
from teleconsult.records.http import RECORDS_DEPS
from teleconsult.server.app import POOL
from tests.conftest import StartServer
from tests.fhirseed import Seeded, fhir_json, give_doctor_profile, seed_patients
from tests.fhirvalidate import assert_outcome
from tests.test_fhir_export import KICK, _files, _kick, _manifest, _worker, _world
from tests.world import Tenant

Client = TestClient[Any, Any]
RECORD_TYPES = ("Condition", "AllergyIntolerance", "MedicationRequest", "MedicationStatement")


def _crypt(client: Client) -> FieldCrypt:
    crypt: FieldCrypt = client.app[RECORDS_DEPS].crypt
    return crypt


def _resources(bundle: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if kind is None or e["resource"]["resourceType"] == kind
    ]


async def _seed(client: Client, pool: asyncpg.Pool, tenant: Tenant, n: int, **kw: Any) -> Seeded:
    doctor = tenant[Role.DOCTOR]
    return await seed_patients(
        pool, tenant.clinic_id, doctor.user_id, n, crypt=_crypt(client), **kw
    )


async def test_a_doctor_with_a_basis_reads_and_searches_every_record_type(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    seeded = await _seed(client, app_pool, tenant, 3, consent_to_clinic=True)
    doctor = tenant[Role.DOCTOR]
    patient = seeded.patient_ids[0]
    expected = {"Condition": 2, "AllergyIntolerance": 2, "MedicationRequest": 2}
    expected["MedicationStatement"] = 1
    for kind in RECORD_TYPES:
        bundle = await fhir_json(client, f"/fhir/R4/{kind}", doctor, patient=str(patient))
        found = _resources(bundle)
        assert len(found) == expected[kind], kind
        for resource in found:
            ref: dict[str, Any] = resource.get("subject") or resource["patient"]
            assert ref["reference"] == f"Patient/{patient}"
            again = await fhir_json(client, f"/fhir/R4/{kind}/{resource['id']}", doctor)
            assert again == resource
            by_id = await fhir_json(client, f"/fhir/R4/{kind}", doctor, _id=resource["id"])
            assert _resources(by_id) == [resource]
    # Decrypted: the seeded plaintext comes back (patient 0: Penicillin and Peanuts).
    allergies = await fhir_json(client, "/fhir/R4/AllergyIntolerance", doctor, patient=str(patient))
    names = {a["code"]["text"] for a in _resources(allergies)}
    assert names == {"Penicillin", "Peanuts"}
    hives = next(a for a in _resources(allergies) if a["code"]["text"] == "Penicillin")
    assert hives["reaction"][0]["severity"] == "moderate"
    conditions = await fhir_json(client, "/fhir/R4/Condition", doctor, subject=f"Patient/{patient}")
    onsets = {c["code"]["text"]: c.get("onsetDateTime") for c in _resources(conditions)}
    assert onsets == {"Essential hypertension": "2019-05", "Asthma": "2004-03-12"}
    requests = _resources(
        await fhir_json(client, "/fhir/R4/MedicationRequest", doctor, patient=str(patient))
    )
    assert {r["medicationCodeableConcept"]["text"] for r in requests} == {
        "Amoxicillin 500 mg capsule",
        "Paracetamol 500 mg tablet",
    }
    assert len({r["groupIdentifier"]["value"] for r in requests}) == 1
    missing = await client.get(f"/fhir/R4/Condition/{patient}-000000000000", headers=doctor.headers)
    await assert_outcome(missing, 404, "not_found")


async def test_medication_request_status_follows_cancellation_and_expiry(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    seeded = await _seed(client, app_pool, tenant, 3, consent_to_clinic=True)
    doctor = tenant[Role.DOCTOR]
    statuses = {}
    for n, pid in enumerate(seeded.patient_ids):
        found = _resources(
            await fhir_json(client, "/fhir/R4/MedicationRequest", doctor, patient=str(pid))
        )
        statuses[n] = {r["status"] for r in found}
    assert statuses == {0: {"active"}, 1: {"cancelled"}, 2: {"completed"}}
    cancelled = await fhir_json(client, "/fhir/R4/MedicationRequest", doctor, status="cancelled")
    patients = {r["subject"]["reference"] for r in _resources(cancelled)}
    assert patients == {f"Patient/{seeded.patient_ids[1]}"}
    stopped = await fhir_json(client, "/fhir/R4/MedicationStatement", doctor, status="stopped")
    assert {r["status"] for r in _resources(stopped)} == {"stopped"}
    assert len(_resources(stopped)) == 1


async def test_search_pages_end_on_a_row_so_no_entry_is_lost(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    seeded = await _seed(client, app_pool, tenant, 5, consent_to_clinic=True)
    doctor = tenant[Role.DOCTOR]
    bundle = await fhir_json(client, "/fhir/R4/Condition", doctor, _count="2")
    seen = [r["id"] for r in _resources(bundle)]
    pages = 1
    while True:
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if "next" not in links:
            break
        url = links["next"]
        bundle = await fhir_json(client, url[url.index("/fhir/") :], doctor)
        seen += [r["id"] for r in _resources(bundle)]
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == 2 * len(seeded.patient_ids)


async def test_front_desk_admins_and_clinicians_without_a_basis_get_no_record(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    seeded = await _seed(client, app_pool, tenant, 1)
    pid = str(seeded.patient_ids[0])  # patient 1: a requested appointment, no basis
    for who in (tenant[Role.RECEPTIONIST], tenant[Role.ADMIN]):
        for kind in RECORD_TYPES:
            resp = await client.get(f"/fhir/R4/{kind}", headers=who.headers)
            assert resp.status == 403, (who.role, kind)
    nurse = tenant[Role.NURSE]
    resp = await client.get("/fhir/R4/Condition", headers=nurse.headers, params={"patient": pid})
    await assert_outcome(resp, 403, "forbidden")
    assert _resources(await fhir_json(client, "/fhir/R4/AllergyIntolerance", nurse)) == []
    stranger = other_tenant[Role.DOCTOR]
    resp = await client.get(
        "/fhir/R4/MedicationStatement", headers=stranger.headers, params={"patient": pid}
    )
    assert resp.status == 404


async def test_a_revoked_consent_stops_the_next_read(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    seeded = await _seed(client, app_pool, tenant, 1, appointments=False)
    pid = seeded.patient_ids[0]
    nurse = tenant[Role.NURSE]
    await app_pool.execute(
        "INSERT INTO consents (clinic_id, patient_id, grantee_user_id, scope, granted_by, "
        "expires_at) VALUES ($1, $2, $3, 'medications', $2, now() + interval '1 day')",
        tenant.clinic_id,
        pid,
        nurse.user_id,
    )
    found = _resources(await fhir_json(client, "/fhir/R4/MedicationStatement", nurse))
    assert len(found) == 1
    path = f"/fhir/R4/MedicationStatement/{found[0]['id']}"
    await fhir_json(client, path, nurse)
    # Scope medications: the summary (allergies) stays closed.
    resp = await client.get(
        "/fhir/R4/AllergyIntolerance", headers=nurse.headers, params={"patient": str(pid)}
    )
    assert resp.status == 403
    await app_pool.execute(
        "UPDATE consents SET revoked_at = now(), revoked_by = patient_id WHERE patient_id = $1",
        pid,
    )
    resp = await client.get(path, headers=nurse.headers)
    assert resp.status == 403


async def test_a_document_reference_points_at_the_download_route_never_at_content(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    keys = await _crypt(client).for_clinic(app_pool, tenant.clinic_id)
    doc_id = uuid4()
    title = "Full blood count " + uuid4().hex[:6]
    await app_pool.execute(
        "INSERT INTO documents (id, clinic_id, patient_id, title_ct, category, created_by) "
        "VALUES ($1, $2, $3, $4, 'lab_result', $3)",
        doc_id,
        tenant.clinic_id,
        patient.user_id,
        keys.encrypt("documents", "title_ct", doc_id, title),
    )
    for version in (1, 2):
        await app_pool.execute(
            "INSERT INTO document_versions (id, document_id, version, content_type, size, "
            "sha256, blob_name, uploaded_by) VALUES ($1, $2, $3, 'application/pdf', $4, $5, "
            "$6, $7)",
            uuid4(),
            doc_id,
            version,
            1000 * version,
            hashlib.sha256(str(version).encode()).digest(),
            f"doc-{uuid4()}",
            patient.user_id,
        )
    resource = await fhir_json(client, f"/fhir/R4/DocumentReference/{doc_id}", patient)
    assert resource["description"] == title
    assert resource["type"]["coding"][0]["code"] == "lab_result"
    attachments = [c["attachment"] for c in resource["content"]]
    route = f"/api/v1/patients/{patient.user_id}/documents/{doc_id}/content"
    assert [a["url"].split("://", 1)[1].split("/", 1)[1] for a in attachments] == [
        route.lstrip("/") + "?version=2",
        route.lstrip("/") + "?version=1",
    ]
    assert all("data" not in a for a in attachments)
    assert [a["size"] for a in attachments] == [2000, 1000]
    typed = await fhir_json(client, "/fhir/R4/DocumentReference", patient, type="report")
    assert _resources(typed) == []
    typed = await fhir_json(client, "/fhir/R4/DocumentReference", patient, type="lab_result")
    assert [r["id"] for r in _resources(typed)] == [str(doc_id)]


async def test_invoices_follow_the_payments_authorization(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    doctor, patient = tenant[Role.DOCTOR], tenant[Role.PATIENT]
    seeded = await _seed(client, app_pool, tenant, 2)
    await give_doctor_profile(app_pool, tenant.clinic_id, doctor.user_id)
    await app_pool.execute(
        "INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at, "
        "ends_at, status) VALUES ($1, $2, $3, 'video', $4, $5, 'confirmed')",
        tenant.clinic_id,
        doctor.user_id,
        patient.user_id,
        datetime(2026, 3, 1, 9, tzinfo=UTC),
        datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
    )
    own = _resources(await fhir_json(client, "/fhir/R4/Invoice", patient))
    assert [r["subject"]["reference"] for r in own] == [f"Patient/{patient.user_id}"]
    invoice = own[0]
    assert invoice["status"] == "issued"
    assert invoice["totalGross"] == {"value": 10.0, "currency": "KES"}
    status = [e for e in invoice["extension"] if e["url"].endswith("invoice-payment-status")]
    assert status == [
        {"url": status[0]["url"], "valueCode": "open"},
    ]
    assert await fhir_json(client, f"/fhir/R4/Invoice/{invoice['id']}", patient) == invoice
    desk = tenant[Role.RECEPTIONIST]
    clinic = _resources(await fhir_json(client, "/fhir/R4/Invoice", desk, _count="100"))
    patients = {r["subject"]["reference"] for r in clinic}
    assert patients == {f"Patient/{p}" for p in [patient.user_id, *seeded.patient_ids]}
    issued = _resources(await fhir_json(client, "/fhir/R4/Invoice", desk, status="balanced"))
    assert issued == []
    others = _resources(
        await fhir_json(client, "/fhir/R4/Invoice", patient, patient=str(seeded.patient_ids[0]))
    )
    assert others == []
    seeded_invoice = next(r for r in clinic if r["id"] != invoice["id"])
    resp = await client.get(f"/fhir/R4/Invoice/{seeded_invoice['id']}", headers=patient.headers)
    assert resp.status == 404
    resp = await client.get(
        f"/fhir/R4/Invoice/{invoice['id']}", headers=other_tenant[Role.RECEPTIONIST].headers
    )
    assert resp.status == 404
    for clinician in (doctor, tenant[Role.NURSE]):
        resp = await client.get("/fhir/R4/Invoice", headers=clinician.headers)
        assert resp.status == 403
    mine = await fhir_json(client, f"/fhir/R4/Patient/{patient.user_id}/$everything", patient)
    assert [r["id"] for r in _resources(mine, "Invoice")] == [invoice["id"]]


async def test_everything_holds_the_records_a_doctor_may_see_but_no_invoice(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    seeded = await _seed(client, app_pool, tenant, 1, consent_to_clinic=True)
    doctor = tenant[Role.DOCTOR]
    pid = seeded.patient_ids[0]
    bundle = await fhir_json(client, f"/fhir/R4/Patient/{pid}/$everything", doctor)
    kinds = [r["resourceType"] for r in _resources(bundle)]
    for kind, count in (("Condition", 2), ("AllergyIntolerance", 2), ("MedicationRequest", 2)):
        assert kinds.count(kind) == count, kind
    assert kinds.count("MedicationStatement") == 1
    assert "Invoice" not in kinds
    narrowed = await fhir_json(
        client, f"/fhir/R4/Patient/{pid}/$everything", doctor, _type="Patient,Condition"
    )
    assert {r["resourceType"] for r in _resources(narrowed)} == {"Patient", "Condition"}
    assert UUID(_resources(narrowed, "Patient")[0]["id"]) == pid


async def test_record_reads_and_searches_are_audited_with_ids_only(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    seeded = await _seed(client, app_pool, tenant, 1, consent_to_clinic=True)
    doctor = tenant[Role.DOCTOR]
    pid = seeded.patient_ids[0]
    found = _resources(
        await fhir_json(client, "/fhir/R4/MedicationRequest", doctor, patient=str(pid))
    )
    await fhir_json(client, f"/fhir/R4/MedicationRequest/{found[0]['id']}", doctor)
    condition = _resources(await fhir_json(client, "/fhir/R4/Condition", doctor, patient=str(pid)))[
        0
    ]
    await fhir_json(client, f"/fhir/R4/Condition/{condition['id']}", doctor)
    rows = await app_pool.fetch(
        """
        SELECT action, object_type, object_id, detail::text AS detail FROM (
            SELECT action, object_type, object_id, actor_id, detail FROM audit_intake
            UNION ALL SELECT action, object_type, object_id, actor_id, detail FROM audit_log
        ) a WHERE actor_id = $1 AND action LIKE 'fhir.%'
        """,
        doctor.user_id,
    )
    got = {(r["action"], r["object_type"], r["object_id"]) for r in rows}
    rx_id = found[0]["id"].rsplit("-", 1)[0]
    assert ("fhir.read", "medicationrequest", rx_id) in got
    assert ("fhir.read", "condition", str(pid)) in got
    assert ("fhir.search", "medicationrequest", str(pid)) in got
    text = " ".join(r["detail"] or "" for r in rows)
    for plaintext in ("Amoxicillin", "hypertension", "Asthma", "diabetes"):
        assert plaintext not in text


async def test_an_export_honours_each_patients_consent_scope_per_type(
    start_server: StartServer,
) -> None:
    client, tenant = await _world(start_server)
    pool = client.app[POOL]
    doctor = tenant[Role.DOCTOR]
    seeded = await seed_patients(
        pool,
        tenant.clinic_id,
        doctor.user_id,
        3,
        appointments=False,  # no care relationship: consents alone decide
        crypt=client.app[RECORDS_DEPS].crypt,
    )
    vitals_only, medications, nothing = seeded.patient_ids
    for pid, scope in ((vitals_only, "vitals"), (medications, "medications")):
        await pool.execute(
            "INSERT INTO consents (clinic_id, patient_id, grantee_user_id, scope, granted_by, "
            "expires_at) VALUES ($1, $2, $3, $4, $2, now() + interval '1 day')",
            tenant.clinic_id,
            pid,
            doctor.user_id,
            scope,
        )
    types = "Condition,AllergyIntolerance,MedicationRequest,MedicationStatement"
    status = await _kick(client, doctor, _type=types)
    worker = _worker(client)
    for _ in range(100):  # the session's database may hold other tests' queued jobs
        if not await worker.run_once():
            break
    files = await _files(client, doctor, await _manifest(client, doctor, status))
    assert files["Condition"] == [] and files["AllergyIntolerance"] == []
    for kind in ("MedicationRequest", "MedicationStatement"):
        assert {r["subject"]["reference"] for r in files[kind]} == {f"Patient/{medications}"}
    assert len(files["MedicationRequest"]) == 2
    assert nothing not in {r["subject"]["reference"] for r in files["MedicationStatement"]}
    # Doctors read no invoices; admins no clinical records.
    resp = await client.get(
        "/fhir/R4/$export", params={"_type": "Invoice"}, headers={**doctor.headers, **KICK}
    )
    await assert_outcome(resp, 400, "validation_failed")
    resp = await client.get(
        "/fhir/R4/$export",
        params={"_type": "Condition"},
        headers={**tenant[Role.ADMIN].headers, **KICK},
    )
    await assert_outcome(resp, 400, "validation_failed")
