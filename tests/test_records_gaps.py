"""Issue 14, part RG: expired document uploads are swept, medication statements can be
stopped, and the sync feed carries documents, consents, households and care teams."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from teleconsult.core.identity import Role
from teleconsult.records.documents.routes import DOCUMENTS
from teleconsult.records.documents.sweeper import UploadSweeper
from tests.auditkit import chained
from tests.fhirseed import fhir_json
from tests.fhirvalidate import validate
from tests.recordskit import CHUNK, OCTETS, Client, give_care, pdf, start, upload
from tests.world import Account, Tenant, assert_problem


@pytest.fixture
async def cared(app_pool: asyncpg.Pool, tenant: Tenant) -> Tenant:
    await give_care(app_pool, tenant[Role.DOCTOR], tenant[Role.PATIENT])
    return tenant


# -- expired uploads -------------------------------------------------------------------


async def test_an_expired_uploads_chunks_are_swept_and_a_live_one_is_untouched(
    client: Client, app_pool: asyncpg.Pool, cared: Tenant
) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    ids = []
    contents = [pdf(CHUNK + 100), pdf(CHUNK + 200)]
    for content in contents:
        resp = await start(client, doctor, patient, content)
        assert resp.status == 201, await resp.text()
        upload_id = (await resp.json())["id"]
        resp = await client.put(
            f"/api/v1/patients/{patient.user_id}/document-uploads/{upload_id}",
            params={"offset": "0"},
            data=content[:CHUNK],
            headers={**doctor.headers, **OCTETS},
        )
        assert resp.status == 200, await resp.text()
        ids.append(upload_id)
    expired, live = ids
    await app_pool.execute(
        "UPDATE document_uploads SET expires_at = now() - interval '1 second' WHERE id = $1",
        expired,
    )

    async def chunks(upload_id: str) -> int:
        count: int = await app_pool.fetchval(
            "SELECT count(*) FROM document_upload_chunks WHERE upload_id = $1", upload_id
        )
        return count

    assert (await chunks(expired), await chunks(live)) == (1, 1)
    sweeper = UploadSweeper(client.app[DOCUMENTS], period=3600)
    assert await sweeper.sweep() == 1
    assert (await chunks(expired), await chunks(live)) == (0, 1)
    rows = await app_pool.fetch("SELECT id FROM document_uploads WHERE id = ANY($1::uuid[])", ids)
    assert [str(r["id"]) for r in rows] == [live]
    await chained(app_pool)
    audited = await app_pool.fetch(
        "SELECT object_id FROM audit_log WHERE action = 'document.upload_expire'"
    )
    assert [r["object_id"] for r in audited] == [expired]
    assert await sweeper.sweep() == 0  # nothing more is due
    # The live upload still completes.
    resp = await client.put(
        f"/api/v1/patients/{patient.user_id}/document-uploads/{live}",
        params={"offset": str(CHUNK)},
        data=contents[1][CHUNK:],
        headers={**doctor.headers, **OCTETS},
    )
    assert resp.status == 200, await resp.text()
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/document-uploads/{live}/complete",
        headers=doctor.headers,
    )
    assert resp.status == 201, await resp.text()


# -- stopping a medication statement ------------------------------------------------------


async def test_a_medication_statement_is_stopped_once_as_a_new_fact(
    client: Client, app_pool: asyncpg.Pool, cared: Tenant
) -> None:
    patient, doctor, nurse = cared[Role.PATIENT], cared[Role.DOCTOR], cared[Role.NURSE]
    path = f"/api/v1/patients/{patient.user_id}/medications"
    resp = await client.post(
        path, json={"drug": "Amoxicillin 500 mg", "dose": "1 capsule"}, headers=patient.headers
    )
    assert resp.status == 201, await resp.text()
    med = await resp.json()
    assert med["status"] == "active" and med["stop"] is None
    cursor = (await _sync(client, patient))["next_cursor"]
    reason = f"Rash after three days {secrets.token_hex(4)}"
    today = datetime.now(UTC).date()
    stop = f"{path}/{med['id']}/stop"
    # Bad input: a date too far ahead, an empty reason; nothing is written.
    far = (today + timedelta(days=400)).isoformat()
    resp = await client.post(stop, json={"ended_on": far, "reason": "x"}, headers=doctor.headers)
    assert (await assert_problem(resp, 400, "validation_failed"))["errors"][0][
        "field"
    ] == "body.ended_on"
    resp = await client.post(
        stop, json={"ended_on": today.isoformat(), "reason": " "}, headers=doctor.headers
    )
    body = await assert_problem(resp, 400, "validation_failed")
    assert body["errors"][0]["field"] == "body.reason"
    # A clinician without a basis may not; an unknown statement is not found.
    resp = await client.post(
        stop, json={"ended_on": today.isoformat(), "reason": reason}, headers=nurse.headers
    )
    await assert_problem(resp, 403, "forbidden")
    resp = await client.post(
        f"{path}/{uuid4()}/stop",
        json={"ended_on": today.isoformat(), "reason": reason},
        headers=doctor.headers,
    )
    await assert_problem(resp, 404, "not_found")
    assert (await app_pool.fetchval("SELECT status FROM medication_statements")) == "active"

    resp = await client.post(
        stop, json={"ended_on": today.isoformat(), "reason": reason}, headers=doctor.headers
    )
    assert resp.status == 200, await resp.text()
    stopped = await resp.json()
    assert stopped["status"] == "stopped"
    assert stopped["details"] == med["details"]  # the statement itself is unchanged
    assert stopped["stop"]["ended_on"] == today.isoformat()
    assert stopped["stop"]["reason"] == reason
    assert stopped["stop"]["stopped_by"] == str(doctor.user_id)
    # Once only.
    resp = await client.post(
        stop, json={"ended_on": today.isoformat(), "reason": "again"}, headers=doctor.headers
    )
    await assert_problem(resp, 409, "conflict")
    listed = (await (await client.get(path, headers=patient.headers)).json())["items"]
    assert [(m["status"], m["stop"]["reason"]) for m in listed] == [("stopped", reason)]
    # The reason is encrypted at rest; the database refuses any other edit.
    raw = await app_pool.fetchval(
        "SELECT stop_reason_ct FROM medication_statements WHERE id = $1", UUID(med["id"])
    )
    assert reason.encode() not in raw
    for sql in (
        "UPDATE medication_statements SET status = 'active', stopped_at = NULL, "
        "stopped_by = NULL, ended_on = NULL, stop_reason_ct = NULL WHERE id = $1",
        "UPDATE medication_statements SET ended_on = ended_on - 1 WHERE id = $1",
        "UPDATE medication_statements SET details_ct = stop_reason_ct WHERE id = $1",
        "DELETE FROM medication_statements WHERE id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app_pool.execute(sql, UUID(med["id"]))
    # Audited; the sync feed carries the stop once; FHIR says "stopped".
    await chained(app_pool)
    actions = await app_pool.fetch(
        "SELECT actor_id FROM audit_log WHERE action = 'medication.stop' AND object_id = $1",
        med["id"],
    )
    assert [r["actor_id"] for r in actions] == [doctor.user_id]
    news = (await _sync(client, patient, since=cursor))["changes"]
    assert [(c["kind"], c["data"]["status"], c["data"]["stop"]["reason"]) for c in news] == [
        ("medication", "stopped", reason)
    ]
    bundle = await fhir_json(
        client, "/fhir/R4/MedicationStatement", doctor, patient=str(patient.user_id)
    )
    resources = [e["resource"] for e in bundle["entry"]]
    assert [(r["status"], r["statusReason"][0]["text"]) for r in resources] == [("stopped", reason)]
    assert resources[0]["effectivePeriod"] == {"end": today.isoformat()}
    report = validate(resources)
    print(report.summary())
    assert report.errors == []


async def _sync(client: Client, who: Account, since: int = 0) -> Any:
    resp = await client.get("/api/v1/sync", params={"since": str(since)}, headers=who.headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


# -- the sync feed's new kinds ------------------------------------------------------------


def _kinds(page: Any, kind: str) -> list[dict[str, Any]]:
    return [c for c in page["changes"] if c["kind"] == kind]


async def test_sync_carries_documents_metadata_to_those_allowed_only(
    client: Client, app_pool: asyncpg.Pool, cared: Tenant
) -> None:
    patient, doctor, nurse = cared[Role.PATIENT], cared[Role.DOCTOR], cared[Role.NURSE]
    # The nurse has a basis on the patient, but for vitals only: no document.
    await app_pool.execute(
        "INSERT INTO consents (clinic_id, patient_id, grantee_user_id, scope, granted_by, "
        "expires_at) VALUES ($1, $2, $3, 'vitals', $2, now() + interval '1 day')",
        patient.clinic_id,
        patient.user_id,
        nurse.user_id,
    )
    cursors = {who.role: (await _sync(client, who))["next_cursor"] for who in (patient, doctor)}
    content = pdf(3000)
    resp = await upload(client, doctor, patient, content)
    assert resp.status == 201, await resp.text()
    document = await resp.json()
    for who in (patient, doctor):
        page = await _sync(client, who, since=cursors[who.role])
        docs = _kinds(page, "document")
        assert len(docs) == 1 and len(page["changes"]) == 1
        data = docs[0]["data"]
        assert data["id"] == document["id"] and data["title"] == "Full blood count"
        assert [v["version"] for v in data["versions"]] == [1]
        assert data["versions"][0]["sha256"] == hashlib.sha256(content).hexdigest()
        assert "PLAINTEXT-MARKER" not in json.dumps(page)  # never the content
        cursors[who.role] = page["next_cursor"]
    assert _kinds(await _sync(client, nurse), "document") == []
    other = cared.other_patient
    assert other is not None
    assert (await _sync(client, other))["changes"] == []
    # A new version: the document once more, with both versions, once.
    resp = await upload(
        client, patient, patient, pdf(2000), title=None, category=None, document_id=document["id"]
    )
    assert resp.status == 201, await resp.text()
    page = await _sync(client, patient, since=cursors[Role.PATIENT])
    assert [(c["kind"], len(c["data"]["versions"])) for c in page["changes"]] == [("document", 2)]
    assert _kinds(await _sync(client, nurse), "document") == []


async def test_sync_shows_consents_to_the_patient_revoked_ones_as_revoked(
    client: Client, cared: Tenant
) -> None:
    patient, doctor, nurse = cared[Role.PATIENT], cared[Role.DOCTOR], cared[Role.NURSE]
    cursor = (await _sync(client, patient))["next_cursor"]
    path = f"/api/v1/patients/{patient.user_id}/consents"
    resp = await client.post(
        path,
        json={
            "grantee_user_id": str(nurse.user_id),
            "scope": "vitals",
            "expires_at": (datetime.now(UTC) + timedelta(days=7)).isoformat(),
        },
        headers=patient.headers,
    )
    assert resp.status == 201, await resp.text()
    consent = await resp.json()
    page = await _sync(client, patient, since=cursor)
    assert [(c["kind"], c["id"], c["data"]["revoked_at"]) for c in page["changes"]] == [
        ("consent", consent["id"], None)
    ]
    # The grantee and a clinician of the care team never see the patient's consents.
    for who in (nurse, doctor):
        assert _kinds(await _sync(client, who), "consent") == []
    resp = await client.post(f"{path}/{consent['id']}/revoke", headers=patient.headers)
    assert resp.status == 200, await resp.text()
    news = await _sync(client, patient, since=page["next_cursor"])
    assert [(c["kind"], c["id"]) for c in news["changes"]] == [("consent", consent["id"])]
    revoked = news["changes"][0]["data"]
    assert revoked["revoked_at"] is not None and revoked["revoked_by"] == str(patient.user_id)
    for who in (nurse, doctor):
        assert _kinds(await _sync(client, who), "consent") == []


async def test_sync_shows_care_team_memberships_to_the_patient_and_each_member_their_own(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient, doctor, nurse = tenant[Role.PATIENT], tenant[Role.DOCTOR], tenant[Role.NURSE]
    other = tenant.other_patient
    assert other is not None
    mine = await give_care(app_pool, doctor, patient)
    theirs = await give_care(app_pool, nurse, patient)
    page = await _sync(client, patient)
    assert [(c["kind"], c["data"]["member_id"]) for c in page["changes"]] == [
        ("care_team", str(doctor.user_id)),
        ("care_team", str(nurse.user_id)),
    ]
    assert [c["id"] for c in (await _sync(client, doctor))["changes"]] == [str(mine)]
    assert [c["id"] for c in (await _sync(client, nurse))["changes"]] == [str(theirs)]
    assert (await _sync(client, other))["changes"] == []
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/care-team/{theirs}/end",
        headers=tenant[Role.ADMIN].headers,
    )
    assert resp.status == 200, await resp.text()
    news = await _sync(client, patient, since=page["next_cursor"])
    assert [(c["id"], c["data"]["ended_at"] is not None) for c in news["changes"]] == [
        (str(theirs), True)
    ]


async def test_sync_shows_household_links_to_members_guardians_and_carers(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    guardian, child = tenant[Role.PATIENT], tenant.other_patient
    assert child is not None
    doctor, nurse = tenant[Role.DOCTOR], tenant[Role.NURSE]
    await give_care(app_pool, doctor, child)
    cursors = {who.user_id: (await _sync(client, who))["next_cursor"] for who in (guardian, doctor)}
    household = await app_pool.fetchval(
        "INSERT INTO households (clinic_id, label, created_by) VALUES ($1, 'Home', $2) "
        "RETURNING id",
        tenant.clinic_id,
        tenant[Role.ADMIN].user_id,
    )
    await app_pool.execute(
        "INSERT INTO household_members (household_id, user_id, kind, permissions, added_by) "
        "VALUES ($1, $2, 'guardian', '{}', $4), ($1, $3, 'dependant', '{read}', $4)",
        household,
        guardian.user_id,
        child.user_id,
        tenant[Role.ADMIN].user_id,
    )
    page = await _sync(client, guardian, since=cursors[guardian.user_id])
    households = _kinds(page, "household")
    # The household on the guardian's own record and on the child's (read permission).
    assert sorted(c["patient_id"] for c in households) == sorted(
        [str(guardian.user_id), str(child.user_id)]
    )
    assert {c["id"] for c in households} == {str(household)}
    members = {m["user_id"]: m["kind"] for m in households[0]["data"]["members"]}
    assert members == {str(guardian.user_id): "guardian", str(child.user_id): "dependant"}
    # The child's carer sees it on the child's record; nobody else sees it.
    carer = _kinds(await _sync(client, doctor, since=cursors[doctor.user_id]), "household")
    assert [c["patient_id"] for c in carer] == [str(child.user_id)]
    for who in (nurse, other_tenant[Role.PATIENT], other_tenant[Role.DOCTOR]):
        assert _kinds(await _sync(client, who), "household") == []
    # The child's "read" withdrawn: the guardian no longer sees the child's record.
    await app_pool.execute(
        "UPDATE household_members SET permissions = '{}' WHERE household_id = $1 AND user_id = $2",
        household,
        child.user_id,
    )
    news = _kinds(await _sync(client, guardian, since=page["next_cursor"]), "household")
    assert [c["patient_id"] for c in news] == [str(guardian.user_id)]
    assert news[0]["data"]["members"][1]["permissions"] == []
