"""FHIR R4 read, search and Patient/$everything over HTTP, against real PostgreSQL.

Resources are checked by their JSON (the R4 validation itself is Medplum's, in
tests/test_fhir_validate.py). Errors under /fhir/ are OperationOutcomes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from tests.fhirseed import fhir_json, seed_patients
from tests.fhirvalidate import assert_outcome
from tests.recordskit import child_of
from tests.world import Account, Tenant, login, make_user

Client = TestClient[Any, Any]


def _ids(bundle: dict[str, Any], kind: str | None = None) -> list[str]:
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if kind is None or e["resource"]["resourceType"] == kind
    ]


async def _all_pages(client: Client, path: str, who: Account, **params: str) -> list[str]:
    bundle = await fhir_json(client, path, who, **params)
    seen = _ids(bundle)
    pages = 1
    while True:
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if "next" not in links:
            return seen
        url = links["next"]
        bundle = await fhir_json(client, url[url.index("/fhir/") :], who)
        seen += _ids(bundle)
        pages += 1
        assert pages < 100


async def test_a_patient_reads_their_own_patient_resource_and_nobody_elses(
    client: Client, tenant: Tenant, other_tenant: Tenant
) -> None:
    me = tenant[Role.PATIENT]
    assert tenant.other_patient is not None
    path = f"/fhir/R4/Patient/{me.user_id}"
    mine = await fhir_json(client, path, me)
    assert mine["resourceType"] == "Patient" and mine["id"] == str(me.user_id)
    assert mine["managingOrganization"]["reference"] == f"Organization/{tenant.clinic_id}"
    assert {"system": "email", "value": me.email} in mine["telecom"]
    await assert_outcome(
        await client.get(path, headers=tenant.other_patient.headers), 404, "not_found"
    )
    await assert_outcome(
        await client.get(path, headers=other_tenant[Role.ADMIN].headers), 404, "not_found"
    )
    assert (await fhir_json(client, path, tenant[Role.RECEPTIONIST]))["id"] == str(me.user_id)
    found = await fhir_json(client, "/fhir/R4/Patient", me)
    assert _ids(found) == [str(me.user_id)]


async def test_search_pages_through_every_match_once(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    seeded = await seed_patients(app_pool, tenant.clinic_id, tenant[Role.DOCTOR].user_id, 23)
    expected = {str(p) for p in seeded.patient_ids} | {
        str(tenant[Role.PATIENT].user_id),
        str(tenant.other_patient.user_id if tenant.other_patient else ""),
    }
    seen = await _all_pages(client, "/fhir/R4/Patient", tenant[Role.ADMIN], _count="10")
    assert len(seen) == len(set(seen)) == len(expected) == 25
    assert set(seen) == expected
    first = await fhir_json(client, "/fhir/R4/Patient", tenant[Role.ADMIN], _count="10")
    relations = [link["relation"] for link in first["link"]]
    assert relations == ["self", "next"] and len(first["entry"]) == 10
    empty = await fhir_json(client, "/fhir/R4/Patient", tenant[Role.ADMIN], _count="0")
    assert empty["entry"] == []


async def test_id_and_last_updated_narrow_a_search(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    seeded = await seed_patients(app_pool, tenant.clinic_id, tenant[Role.DOCTOR].user_id, 4)
    old, new = seeded.patient_ids[0], seeded.patient_ids[1]
    await app_pool.execute(
        "UPDATE users SET updated_at = $2 WHERE id = $1", old, datetime(2020, 5, 1, tzinfo=UTC)
    )
    await app_pool.execute(
        "UPDATE users SET updated_at = $2 WHERE id = $1", new, datetime(2031, 5, 1, tzinfo=UTC)
    )
    admin = tenant[Role.ADMIN]
    assert _ids(await fhir_json(client, "/fhir/R4/Patient", admin, _lastUpdated="lt2021")) == [
        str(old)
    ]
    assert _ids(await fhir_json(client, "/fhir/R4/Patient", admin, _lastUpdated="2031-05")) == [
        str(new)
    ]
    assert _ids(
        await fhir_json(client, "/fhir/R4/Patient", admin, _lastUpdated="ge2031-05-01")
    ) == [str(new)]
    assert (
        _ids(await fhir_json(client, "/fhir/R4/Patient", admin, _lastUpdated="gt2031-05-01")) == []
    )
    both = await fhir_json(client, "/fhir/R4/Patient", admin, _id=f"{old},{new},not-an-id")
    assert sorted(_ids(both)) == sorted([str(old), str(new)])
    meta = next(e["resource"]["meta"] for e in both["entry"] if e["resource"]["id"] == str(old))
    assert meta["lastUpdated"] == "2020-05-01T00:00:00Z"


async def test_encounters_search_by_patient_and_date_and_a_doctor_sees_only_their_own(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    doctor = tenant[Role.DOCTOR]
    colleague = await make_user(app_pool, tenant.clinic_id, Role.DOCTOR, tag="colleague")
    mine = await seed_patients(app_pool, tenant.clinic_id, doctor.user_id, 12)
    theirs = await seed_patients(
        app_pool,
        tenant.clinic_id,
        colleague.user_id,
        6,
        start=datetime(2027, 1, 4, 8, tzinfo=UTC),
    )
    admin_sees = await _all_pages(client, "/fhir/R4/Encounter", tenant[Role.ADMIN])
    doctor_sees = await _all_pages(client, "/fhir/R4/Encounter", doctor)
    # Statuses cycle through six; in_progress and completed are encounters: 4 of 12, 2 of 6.
    assert len(admin_sees) == 6 and len(doctor_sees) == 4
    assert set(doctor_sees) <= {str(a) for a in mine.appointment_ids}
    assert set(admin_sees) - set(doctor_sees) <= {str(a) for a in theirs.appointment_ids}
    completed = mine.patient_ids[2]  # the third appointment of a seed is completed
    by_patient = await fhir_json(
        client, "/fhir/R4/Encounter", doctor, patient=f"Patient/{completed}"
    )
    assert len(by_patient["entry"]) == 1
    encounter = by_patient["entry"][0]["resource"]
    assert encounter["subject"]["reference"] == f"Patient/{completed}"
    assert encounter["status"] == "finished"
    assert encounter["class"]["code"] == "VR"
    same = await fhir_json(client, "/fhir/R4/Encounter", doctor, subject=str(completed))
    assert _ids(same) == _ids(by_patient)
    start = encounter["period"]["start"][:10]
    on_day = await fhir_json(client, "/fhir/R4/Encounter", doctor, date=start)
    assert encounter["id"] in _ids(on_day)
    before = await fhir_json(client, "/fhir/R4/Encounter", doctor, date=f"lt{start}")
    assert encounter["id"] not in _ids(before)
    nobody = await fhir_json(client, "/fhir/R4/Encounter", doctor, patient="Patient/unknown")
    assert nobody["entry"] == []


async def test_bad_search_parameters_and_unknown_paths_answer_operation_outcomes(
    client: Client, tenant: Tenant
) -> None:
    admin = tenant[Role.ADMIN].headers
    for params in (
        {"_lastUpdated": "yesterday"},
        {"_lastUpdated": "sa2024"},
        {"_lastUpdated": "2024-02-30"},
        {"_count": "-1"},
        {"_count": "ten"},
        {"_cursor": "not-a-cursor"},
    ):
        resp = await client.get("/fhir/R4/Patient", params=params, headers=admin)
        body = await assert_outcome(resp, 400, "validation_failed")
        assert body["issue"][0]["code"] == "invalid"
    resp = await client.get(
        "/fhir/R4/Encounter", params={"date": "2024-01-01T10:00"}, headers=admin
    )
    await assert_outcome(resp, 400, "validation_failed")
    await assert_outcome(await client.get("/fhir/R4/Nothing", headers=admin), 404, "not_found")
    await assert_outcome(
        await client.get("/fhir/R4/Patient/not-a-uuid", headers=admin), 404, "not_found"
    )
    body = await assert_outcome(await client.get("/fhir/R4/Patient"), 401, "unauthenticated")
    assert body["issue"][0]["code"] == "login"
    await assert_outcome(
        await client.post("/fhir/R4/Patient", headers=admin), 405, "method_not_allowed"
    )


async def test_everything_needs_the_patient_or_a_care_relationship_and_is_audited(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    doctor = tenant[Role.DOCTOR]
    seeded = await seed_patients(app_pool, tenant.clinic_id, doctor.user_id, 6)
    treated, cancelled_only = seeded.patient_ids[2], seeded.patient_ids[3]
    path = f"/fhir/R4/Patient/{treated}/$everything"
    bundle = await fhir_json(client, path, doctor)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds[0] == "Patient" and _ids(bundle, "Patient") == [str(treated)]
    assert set(kinds) == {"Patient", "Organization", "Practitioner", "Appointment", "Encounter"}
    assert _ids(bundle, "Practitioner") == [str(doctor.user_id)]
    # No basis (records.access): a cancelled appointment is none; the nurse has none.
    # A clinician of the patient's clinic is told 403 (break-glass is possible).
    for who, target in ((doctor, cancelled_only), (tenant[Role.NURSE], treated)):
        resp = await client.get(f"/fhir/R4/Patient/{target}/$everything", headers=who.headers)
        await assert_outcome(resp, 403, "forbidden")
    me = tenant[Role.PATIENT]
    own = await fhir_json(client, f"/fhir/R4/Patient/{me.user_id}/$everything", me)
    assert _ids(own, "Patient") == [str(me.user_id)]
    await assert_outcome(await client.get(path, headers=me.headers), 404, "not_found")
    await assert_outcome(
        await client.get(path, headers=tenant[Role.RECEPTIONIST].headers), 403, "forbidden"
    )
    only = await fhir_json(client, path, doctor, _type="Patient,Encounter")
    assert {e["resource"]["resourceType"] for e in only["entry"]} == {"Patient", "Encounter"}
    later = await fhir_json(client, path, doctor, _since="2099-01-01T00:00:00Z")
    # Nothing changed since then; the clinic (not a patient's resource) is always there.
    assert [e["resource"]["resourceType"] for e in later["entry"]] == ["Organization"]
    bad = await client.get(path, params={"_type": "Claim"}, headers=doctor.headers)
    await assert_outcome(bad, 400, "validation_failed")
    audited = await app_pool.fetchval(
        """
        SELECT count(*) FROM (
            SELECT action, object_id, actor_id FROM audit_intake
            UNION ALL SELECT action, object_id, actor_id FROM audit_log
        ) a WHERE action = 'fhir.everything' AND object_id = $1 AND actor_id = $2
        """,
        str(treated),
        doctor.user_id,
    )
    assert audited == 3  # the doctor's three answers that returned a bundle


async def test_reads_and_searches_write_audit_events(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    me = tenant[Role.PATIENT]
    await fhir_json(client, f"/fhir/R4/Patient/{me.user_id}", tenant[Role.NURSE])
    await fhir_json(client, "/fhir/R4/Practitioner", me)
    rows = await app_pool.fetch(
        """
        SELECT action, object_type, object_id, actor_id FROM (
            SELECT action, object_type, object_id, actor_id, clinic_id FROM audit_intake
            UNION ALL
            SELECT action, object_type, object_id, actor_id, clinic_id FROM audit_log
        ) a WHERE clinic_id = $1 AND action LIKE 'fhir.%'
        """,
        tenant.clinic_id,
    )
    got = {(r["action"], r["object_type"], r["object_id"], r["actor_id"]) for r in rows}
    assert ("fhir.read", "patient", str(me.user_id), tenant[Role.NURSE].user_id) in got
    assert ("fhir.search", "practitioner", None, me.user_id) in got


async def test_organization_and_practitioners_are_the_clinics_directory(
    client: Client, tenant: Tenant, other_tenant: Tenant
) -> None:
    me = tenant[Role.PATIENT]
    org = await fhir_json(client, f"/fhir/R4/Organization/{tenant.clinic_id}", me)
    assert org["name"].startswith("Own")
    doctors = await fhir_json(client, "/fhir/R4/Practitioner", me)
    assert set(_ids(doctors)) == {str(tenant[Role.DOCTOR].user_id), str(tenant[Role.NURSE].user_id)}
    await assert_outcome(
        await client.get(f"/fhir/R4/Organization/{other_tenant.clinic_id}", headers=me.headers),
        404,
        "not_found",
    )
    other_doctor = other_tenant[Role.DOCTOR].user_id
    resp = await client.get(f"/fhir/R4/Practitioner/{other_doctor}", headers=me.headers)
    await assert_outcome(resp, 404, "not_found")
    assert UUID(org["id"]) == tenant.clinic_id


async def test_vitals_need_a_basis_and_a_revoked_consent_stops_access_at_the_next_request(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    doctor, nurse = tenant[Role.DOCTOR], tenant[Role.NURSE]
    seeded = await seed_patients(app_pool, tenant.clinic_id, doctor.user_id, 6, vitals=True)
    patient = seeded.patient_ids[4]  # a no-show: no basis for anyone
    search = {"patient": f"Patient/{patient}"}
    for who in (nurse, doctor):
        resp = await client.get("/fhir/R4/Observation", params=search, headers=who.headers)
        await assert_outcome(resp, 403, "forbidden")
    resp = await client.get(
        "/fhir/R4/Observation", params=search, headers=tenant[Role.RECEPTIONIST].headers
    )
    await assert_outcome(resp, 403, "forbidden")
    consent_id = await app_pool.fetchval(
        "INSERT INTO consents (clinic_id, patient_id, grantee_user_id, scope, granted_by, "
        "expires_at) VALUES ($1, $2, $3, 'vitals', $2, now() + interval '1 day') RETURNING id",
        tenant.clinic_id,
        patient,
        nurse.user_id,
    )
    found = await fhir_json(client, "/fhir/R4/Observation", nurse, **search)
    kinds = {e["resource"]["code"]["coding"][0]["code"] for e in found["entry"]}
    assert kinds == {"8867-4", "85354-9"}
    pressure = await fhir_json(
        client, "/fhir/R4/Observation", nurse, code="http://loinc.org|85354-9", **search
    )
    (bp,) = [e["resource"] for e in pressure["entry"]]
    assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6", "8462-4"]
    assert bp["component"][0]["valueQuantity"]["code"] == "mm[Hg]"
    assert bp["category"][0]["coding"][0]["code"] == "vital-signs"
    one = await fhir_json(client, f"/fhir/R4/Observation/{bp['id']}", nurse)
    assert one["id"] == bp["id"]
    await app_pool.execute(
        "UPDATE consents SET revoked_at = now(), revoked_by = patient_id WHERE id = $1",
        consent_id,
    )
    for path, params in (
        ("/fhir/R4/Observation", search),
        (f"/fhir/R4/Observation/{bp['id']}", {}),
    ):
        resp = await client.get(path, params=params or None, headers=nurse.headers)
        await assert_outcome(resp, 403, "forbidden")
    # Without a patient, a clinician's search covers the patients they have a basis for.
    panel = await fhir_json(client, "/fhir/R4/Observation", doctor, _count="100")
    subjects = {e["resource"]["subject"]["reference"] for e in panel["entry"]}
    assert subjects == {f"Patient/{seeded.patient_ids[i]}" for i in (0, 1, 2)}
    assert (await fhir_json(client, "/fhir/R4/Observation", nurse))["entry"] == []


async def test_a_patient_sees_their_own_vitals_and_consents_as_fhir(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    me, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    seeded = await seed_patients(app_pool, tenant.clinic_id, doctor.user_id, 3, vitals=True)
    await app_pool.execute(
        "INSERT INTO vital_signs (clinic_id, patient_id, kind, loinc, value, unit, measured_at, "
        "recorded_by, source) VALUES ($1, $2, 'temperature', '8310-5', 37.2, 'Cel', now(), $2, "
        "'patient')",
        tenant.clinic_id,
        me.user_id,
    )
    await app_pool.execute(
        "INSERT INTO consents (clinic_id, patient_id, grantee_user_id, scope, granted_by, "
        "expires_at, revoked_at, revoked_by) VALUES ($1, $2, $3, 'notes', $2, "
        "now() + interval '1 day', now(), $2)",
        tenant.clinic_id,
        me.user_id,
        doctor.user_id,
    )
    mine = await fhir_json(client, "/fhir/R4/Observation", me)
    (temperature,) = [e["resource"] for e in mine["entry"]]
    assert temperature["valueQuantity"] == {
        "value": 37.2,
        "unit": "Cel",
        "system": "http://unitsofmeasure.org",
        "code": "Cel",
    }
    assert temperature["performer"] == [{"reference": f"Patient/{me.user_id}"}]
    other = seeded.patient_ids[0]
    resp = await client.get(
        "/fhir/R4/Observation", params={"patient": str(other)}, headers=me.headers
    )
    await assert_outcome(resp, 404, "not_found")
    consents = await fhir_json(client, "/fhir/R4/Consent", me)
    (consent,) = [e["resource"] for e in consents["entry"]]
    assert consent["status"] == "inactive"
    assert consent["provision"]["actor"][0]["reference"]["reference"] == (
        f"Practitioner/{doctor.user_id}"
    )
    assert consent["provision"]["code"][0]["coding"][0]["code"] == "notes"


async def test_a_guardian_reads_and_searches_their_dependants_records_as_fhir(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    """The household rule of records/access.py holds under /fhir/ too: a guardian with
    ``read`` sees the dependant's Patient and clinical resources, by id and in searches
    without a patient parameter; a stranger's stay 404; removal ends it at once."""
    parent = tenant[Role.PATIENT]
    child, family = await child_of(client, app_pool, tenant, "read", "write")
    stranger = await login(client, await make_user(app_pool, tenant.clinic_id, Role.PATIENT))
    for who in (child, stranger):
        resp = await client.post(
            f"/api/v1/patients/{who.user_id}/vitals",
            json={
                "kind": "weight",
                "value": 31.5,
                "unit": "kg",
                "measured_at": datetime.now(UTC).isoformat(),
            },
            headers=who.headers,
        )
        assert resp.status == 201, await resp.text()

    read = await fhir_json(client, f"/fhir/R4/Patient/{child.user_id}", parent)
    assert read["id"] == str(child.user_id)
    patients = await fhir_json(client, "/fhir/R4/Patient", parent)
    assert sorted(_ids(patients)) == sorted([str(parent.user_id), str(child.user_id)])
    observations = await fhir_json(client, "/fhir/R4/Observation", parent)
    subjects = {e["resource"]["subject"]["reference"] for e in observations["entry"]}
    assert subjects == {f"Patient/{child.user_id}"}
    (weight,) = _ids(observations)
    assert (await fhir_json(client, f"/fhir/R4/Observation/{weight}", parent))["id"] == weight
    everything = await fhir_json(client, f"/fhir/R4/Patient/{child.user_id}/$everything", parent)
    assert str(child.user_id) in _ids(everything, "Patient")

    # A stranger's record, and the other way round (a dependant is no guardian).
    await assert_outcome(
        await client.get(f"/fhir/R4/Patient/{stranger.user_id}", headers=parent.headers),
        404,
        "not_found",
    )
    assert _ids(await fhir_json(client, "/fhir/R4/Patient", stranger)) == [str(stranger.user_id)]
    await assert_outcome(
        await client.get(f"/fhir/R4/Patient/{parent.user_id}", headers=child.headers),
        404,
        "not_found",
    )
    assert _ids(await fhir_json(client, "/fhir/R4/Patient", child)) == [str(child.user_id)]

    # Removed from the household: the next request no longer reaches the child.
    resp = await client.post(
        f"/api/v1/households/{family}/members/{parent.user_id}/remove",
        headers=tenant[Role.RECEPTIONIST].headers,
    )
    assert resp.status == 200, await resp.text()
    await assert_outcome(
        await client.get(f"/fhir/R4/Patient/{child.user_id}", headers=parent.headers),
        404,
        "not_found",
    )
    assert _ids(await fhir_json(client, "/fhir/R4/Patient", parent)) == [str(parent.user_id)]
    assert _ids(await fhir_json(client, "/fhir/R4/Observation", parent)) == []
