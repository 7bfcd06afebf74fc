"""Each record type's rules, against the real database: profile and lookup, vital
signs, versioned notes, prescriptions signed by a device and verified by a third
party, medication statements."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from teleconsult.core.identity import Role
from tests.recordskit import (
    DOMAIN,
    Client,
    give_care,
    prescription_document,
    register_device,
    signed_body,
)
from tests.world import Tenant, assert_problem


def now() -> str:
    return datetime.now(UTC).isoformat()


@pytest.fixture
async def cared(app_pool: asyncpg.Pool, tenant: Tenant) -> Tenant:
    """The tenant, with its doctor and nurse on its patient's care team."""
    for role in (Role.DOCTOR, Role.NURSE):
        await give_care(app_pool, tenant[role], tenant[Role.PATIENT])
    return tenant


# -- profile ------------------------------------------------------------------------------


async def test_the_front_desk_finds_a_patient_by_national_id_however_it_is_typed(
    client: Client, tenant: Tenant
) -> None:
    patient, desk = tenant[Role.PATIENT], tenant[Role.RECEPTIONIST]
    national_id = f"KE-{patient.user_id.hex[:8]}"
    resp = await client.patch(
        f"/api/v1/patients/{patient.user_id}/profile",
        json={
            "national_id": national_id,
            "sex": "female",
            "emergency_contacts": [
                {"name": "Amina", "relation": "sister", "phone": "+254711000000"}
            ],
        },
        headers=desk.headers,
    )
    assert resp.status == 200, await resp.text()
    typed = " " + national_id.lower().replace("-", " ") + " "
    resp = await client.get(
        "/api/v1/patient-lookup", params={"national_id": typed}, headers=desk.headers
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["patient_ids"] == [str(patient.user_id)]
    resp = await client.get(f"/api/v1/patients/{patient.user_id}/profile", headers=patient.headers)
    body = await resp.json()
    assert body["national_id"] == national_id
    assert body["emergency_contacts"][0]["name"] == "Amina"


async def test_the_clinical_summary_needs_clinical_access(client: Client, cared: Tenant) -> None:
    patient = cared[Role.PATIENT]
    path = f"/api/v1/patients/{patient.user_id}/clinical-summary"
    change = {"blood_type": "O+", "allergies": [{"substance": "Penicillin", "severity": "severe"}]}
    resp = await client.patch(path, json=change, headers=cared[Role.DOCTOR].headers)
    assert resp.status == 200, await resp.text()
    resp = await client.get(path, headers=patient.headers)
    assert (await resp.json())["allergies"][0]["substance"] == "Penicillin"
    await assert_problem(
        await client.get(path, headers=cared[Role.RECEPTIONIST].headers), 403, "forbidden"
    )


# -- vital signs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vital", "field"),
    [
        ({"kind": "temperature", "value": 370, "unit": "Cel"}, "body.value"),
        ({"kind": "spo2", "value": 120, "unit": "%"}, "body.value"),
        ({"kind": "heart_rate", "value": 0, "unit": "/min"}, "body.value"),
        ({"kind": "blood_pressure", "value": 120, "value2": 130, "unit": "mm[Hg]"}, "body.value2"),
        ({"kind": "blood_pressure", "value": 120, "unit": "mm[Hg]"}, "body.value2"),
        ({"kind": "weight", "value": 70, "unit": "Cel"}, "body.unit"),
    ],
)
async def test_impossible_vital_signs_are_refused_naming_the_field(
    client: Client, app_pool: asyncpg.Pool, cared: Tenant, vital: dict[str, Any], field: str
) -> None:
    patient = cared[Role.PATIENT]
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/vitals",
        json={**vital, "measured_at": now()},
        headers=cared[Role.NURSE].headers,
    )
    body = await assert_problem(resp, 400, "validation_failed")
    assert [e["field"] for e in body["errors"]] == [field]
    assert (
        await app_pool.fetchval(
            "SELECT count(*) FROM vital_signs WHERE patient_id = $1", patient.user_id
        )
        == 0
    )


@pytest.mark.parametrize(
    ("kind", "value", "unit", "loinc"),
    [
        ("heart_rate", 72, "/min", "8867-4"),
        ("temperature", 37.2, "Cel", "8310-5"),
        ("spo2", 97, "%", "59408-5"),
        ("weight", 70.5, "kg", "29463-7"),
        ("height", 172, "cm", "8302-2"),
        ("respiratory_rate", 16, "/min", "9279-1"),
        ("glucose", 95, "mg/dL", "2339-0"),
        ("glucose", 5.4, "mmol/L", "15074-8"),
    ],
)
async def test_every_kind_of_vital_sign_is_stored_with_its_loinc_code(
    client: Client, cared: Tenant, kind: str, value: float, unit: str, loinc: str
) -> None:
    resp = await client.post(
        f"/api/v1/patients/{cared[Role.PATIENT].user_id}/vitals",
        json={"kind": kind, "value": value, "unit": unit, "measured_at": now()},
        headers=cared[Role.DOCTOR].headers,
    )
    assert resp.status == 201, await resp.text()
    stored = await resp.json()
    assert (stored["loinc"], stored["value"]) == (loinc, value)


async def test_a_blood_pressure_is_stored_with_its_loinc_panel(
    client: Client, cared: Tenant
) -> None:
    patient, nurse = cared[Role.PATIENT], cared[Role.NURSE]
    path = f"/api/v1/patients/{patient.user_id}/vitals"
    resp = await client.post(
        path,
        json={
            "kind": "blood_pressure",
            "value": 128,
            "value2": 82,
            "unit": "mm[Hg]",
            "measured_at": now(),
        },
        headers=nurse.headers,
    )
    assert resp.status == 201, await resp.text()
    vital = await resp.json()
    assert (vital["loinc"], vital["source"], vital["recorded_by"]) == (
        "85354-9",
        "clinician",
        str(nurse.user_id),
    )
    resp = await client.get(path, params={"kind": "blood_pressure"}, headers=patient.headers)
    assert [v["id"] for v in (await resp.json())["items"]] == [vital["id"]]


# -- notes ------------------------------------------------------------------------------------


async def test_an_amended_note_keeps_its_history(
    client: Client, app_pool: asyncpg.Pool, cared: Tenant
) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    notes = f"/api/v1/patients/{patient.user_id}/notes"
    resp = await client.post(notes, json={"body": "Cough for 3 days."}, headers=doctor.headers)
    assert resp.status == 201, await resp.text()
    first = await resp.json()
    resp = await client.post(
        f"{notes}/{first['id']}/amendments",
        json={"body": "Cough for 5 days, not 3.", "based_on_version": 1},
        headers=cared[Role.NURSE].headers,
    )
    assert resp.status == 201, await resp.text()
    second = await resp.json()
    assert (second["id"], second["version"], second["supersedes"]) == (
        first["id"],
        2,
        first["version_id"],
    )
    # An amendment written against an old version is refused, not merged.
    resp = await client.post(
        f"{notes}/{first['id']}/amendments",
        json={"body": "Stale edit.", "based_on_version": 1},
        headers=doctor.headers,
    )
    await assert_problem(resp, 409, "stale_version")
    listed = (await (await client.get(notes, headers=patient.headers)).json())["items"]
    assert [(n["id"], n["version"], n["body"]) for n in listed] == [
        (first["id"], 2, "Cough for 5 days, not 3.")
    ]
    resp = await client.get(f"{notes}/{first['id']}/versions", headers=doctor.headers)
    history = (await resp.json())["items"]
    assert [h["body"] for h in history] == ["Cough for 3 days.", "Cough for 5 days, not 3."]


async def test_the_database_refuses_to_edit_or_delete_a_note_version(
    client: Client, app_pool: asyncpg.Pool, cared: Tenant
) -> None:
    patient = cared[Role.PATIENT]
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/notes",
        json={"body": "Original."},
        headers=cared[Role.DOCTOR].headers,
    )
    note_id = (await resp.json())["id"]
    for sql in (
        "UPDATE clinical_note_versions SET author_id = patient_id WHERE note_id = $1::uuid",
        # Same key id, other bytes: not a re-keying, so refused too.
        "UPDATE clinical_note_versions SET body_ct = body_ct || '\\x00'::bytea "
        "WHERE note_id = $1::uuid",
        "DELETE FROM clinical_note_versions WHERE note_id = $1::uuid",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app_pool.execute(sql, note_id)


# -- prescriptions --------------------------------------------------------------------------


async def test_a_prescription_verifies_for_a_third_party_and_not_after_one_byte_changes(
    client: Client, app_pool: asyncpg.Pool, cared: Tenant
) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    device_id, key = await register_device(client, doctor)
    document = prescription_document(doctor, patient, device_id)
    path = f"/api/v1/patients/{patient.user_id}/prescriptions"
    resp = await client.post(
        path, json=signed_body(document, device_id, key), headers=doctor.headers
    )
    assert resp.status == 201, await resp.text()
    issued = await resp.json()
    assert issued["number"].startswith("RX-") and issued["verification_code"]

    # A pharmacy: number and code from the QR code, no account.
    resp = await client.get(
        "/api/v1/prescriptions/verify",
        params={"number": issued["number"], "code": issued["verification_code"]},
    )
    assert resp.status == 200, await resp.text()
    seen = await resp.json()
    assert set(seen) == {
        "number",
        "status",
        "document",
        "canonical",
        "signature",
        "public_key",
        "algorithm",
        "signed_message",
    }
    assert seen["status"] == "active"
    canonical = base64.b64decode(seen["canonical"])
    signature = base64.b64decode(seen["signature"])
    public = VerifyKey(base64.b64decode(seen["public_key"]))
    public.verify(DOMAIN + canonical, signature)  # plain pynacl, nothing of ours
    assert public.encode() == key.verify_key.encode()
    tampered = bytearray(canonical)
    # Quantity 21 -> 91 (found by its key: a bare "21" may stand in an id or a time).
    tampered[canonical.index(b'"quantity":21') + len(b'"quantity":')] = ord("9")
    with pytest.raises(BadSignatureError):
        public.verify(DOMAIN + bytes(tampered), signature)

    # The server refuses the tampered document too, and a wrong code learns nothing.
    body = signed_body(document, device_id, key)
    body["document"] = base64.b64encode(bytes(tampered)).decode()
    resp = await client.post(path, json=body, headers=doctor.headers)
    await assert_problem(resp, 400, "bad_signature")
    resp = await client.get(
        "/api/v1/prescriptions/verify",
        params={"number": issued["number"], "code": "wrong-code-123"},
    )
    await assert_problem(resp, 404, "not_found")

    # Cancelled, never edited.
    resp = await client.post(f"{path}/{issued['id']}/cancel", headers=doctor.headers)
    assert (await resp.json())["status"] == "cancelled"
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_pool.execute(
            "UPDATE prescriptions SET expires_at = expires_at + interval '1 year' "
            "WHERE id = $1::uuid",
            issued["id"],
        )


async def test_a_prescription_must_be_signed_by_the_prescribers_own_device(
    client: Client, cared: Tenant
) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    device_id, key = await register_device(client, cared[Role.NURSE])  # not the doctor's
    document = prescription_document(doctor, patient, device_id)
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/prescriptions",
        json=signed_body(document, device_id, key),
        headers=doctor.headers,
    )
    await assert_problem(resp, 403, "device_not_usable")


async def test_a_document_not_in_canonical_form_is_refused(client: Client, cared: Tenant) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    device_id, key = await register_device(client, doctor)
    body = signed_body(prescription_document(doctor, patient, device_id), device_id, key)
    spaced = base64.b64decode(body["document"]).replace(b",", b", ", 1)
    body["document"] = base64.b64encode(spaced).decode()
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/prescriptions", json=body, headers=doctor.headers
    )
    body_out = await assert_problem(resp, 400, "validation_failed")
    assert body_out["errors"][0]["field"] == "body.document"


async def test_medication_statements_round_trip(client: Client, cared: Tenant) -> None:
    patient = cared[Role.PATIENT]
    path = f"/api/v1/patients/{patient.user_id}/medications"
    resp = await client.post(
        path, json={"drug": "Metformin 500 mg", "frequency": "twice daily"}, headers=patient.headers
    )
    assert resp.status == 201, await resp.text()
    resp = await client.get(path, headers=cared[Role.DOCTOR].headers)
    assert [m["details"]["drug"] for m in (await resp.json())["items"]] == ["Metformin 500 mg"]


async def test_a_prescription_issued_too_far_from_now_is_refused(
    client: Client, cared: Tenant
) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    device_id, key = await register_device(client, doctor)
    document = prescription_document(doctor, patient, device_id)
    document["issued_at"] = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/prescriptions",
        json=signed_body(document, device_id, key),
        headers=doctor.headers,
    )
    body = await assert_problem(resp, 400, "validation_failed")
    assert body["errors"][0]["field"] == "body.document.issued_at"
