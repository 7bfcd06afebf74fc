"""Who may see a record: care relationships, consents, break-glass, guardians
(records/access.py, docs/records.md "Access rules"), against the real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from teleconsult.core.identity import Role
from tests.auditkit import chained
from tests.recordskit import Client, add_member, appointment, child_of, give_care
from tests.world import Account, Tenant, assert_problem, login, make_user


def notes_of(patient: Account) -> str:
    return f"/api/v1/patients/{patient.user_id}/notes"


def soon() -> str:
    return (datetime.now(UTC) + timedelta(days=30)).isoformat()


async def test_a_doctor_without_a_care_relationship_is_refused(
    client: Client, tenant: Tenant
) -> None:
    resp = await client.get(notes_of(tenant[Role.PATIENT]), headers=tenant[Role.DOCTOR].headers)
    await assert_problem(resp, 403, "forbidden")


async def test_an_appointment_opens_the_record_to_its_doctor_within_its_window(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    doctor, patient = tenant[Role.DOCTOR], tenant[Role.PATIENT]
    await appointment(app_pool, doctor, patient, starts_in=timedelta(hours=2))
    resp = await client.get(notes_of(patient), headers=doctor.headers)
    assert resp.status == 200, await resp.text()
    # A requested (unconfirmed) one, or one that ended more than 30 days ago, does not.
    other = tenant.other_patient
    assert other is not None
    await appointment(app_pool, doctor, other, starts_in=timedelta(hours=5), status="requested")
    await appointment(app_pool, doctor, other, starts_in=-timedelta(days=31))
    resp = await client.get(notes_of(other), headers=doctor.headers)
    await assert_problem(resp, 403, "forbidden")


async def test_a_care_team_membership_that_ends_stops_access_at_the_next_request(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    nurse, patient = tenant[Role.NURSE], tenant[Role.PATIENT]
    admin = tenant[Role.ADMIN]
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/care-team",
        json={"member_id": str(nurse.user_id), "ends_at": soon()},
        headers=admin.headers,
    )
    assert resp.status == 201, await resp.text()
    membership = (await resp.json())["id"]
    assert (await client.get(notes_of(patient), headers=nurse.headers)).status == 200
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/care-team/{membership}/end", headers=admin.headers
    )
    assert resp.status == 200, await resp.text()
    await assert_problem(
        await client.get(notes_of(patient), headers=nurse.headers), 403, "forbidden"
    )


async def test_admins_and_front_desk_have_no_clinical_read(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    for role in (Role.ADMIN, Role.RECEPTIONIST):
        for path in (notes_of(patient), f"/api/v1/patients/{patient.user_id}/vitals"):
            await assert_problem(
                await client.get(path, headers=tenant[role].headers), 403, "forbidden"
            )
    # ... even when (wrongly) put on a care team: the role itself never reads clinical data.
    await give_care(app_pool, tenant[Role.ADMIN], patient)
    resp = await client.get(notes_of(patient), headers=tenant[Role.ADMIN].headers)
    await assert_problem(resp, 403, "forbidden")


async def test_consent_granted_used_revoked_is_refused_at_the_very_next_request(
    client: Client, tenant: Tenant
) -> None:
    doctor, patient = tenant[Role.DOCTOR], tenant[Role.PATIENT]
    await assert_problem(
        await client.get(notes_of(patient), headers=doctor.headers), 403, "forbidden"
    )
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/consents",
        json={"grantee_user_id": str(doctor.user_id), "scope": "notes", "expires_at": soon()},
        headers=patient.headers,
    )
    assert resp.status == 201, await resp.text()
    consent = await resp.json()
    assert (await client.get(notes_of(patient), headers=doctor.headers)).status == 200
    # The scope is honoured: notes, not vitals.
    vitals = f"/api/v1/patients/{patient.user_id}/vitals"
    await assert_problem(await client.get(vitals, headers=doctor.headers), 403, "forbidden")
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/consents/{consent['id']}/revoke",
        headers=patient.headers,
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["revoked_at"] is not None
    await assert_problem(
        await client.get(notes_of(patient), headers=doctor.headers), 403, "forbidden"
    )


# A grant of the doctor ($3) to the patient's ($2) record, whose time is over.
EXPIRED_GRANTS = {
    "consent": "INSERT INTO consents (clinic_id, patient_id, grantee_user_id, scope, "
    "granted_by, granted_at, expires_at) VALUES ($1, $2, $3, 'all', $2, "
    "now() - interval '2 days', now() - interval '1 second')",
    "break_glass": "INSERT INTO break_glass_accesses (clinic_id, patient_id, clinician_id, "
    "reason_ct, opened_at, expires_at) VALUES ($1, $2, $3, '\\x00', "
    "now() - interval '2 hours', now() - interval '1 hour')",
}


@pytest.mark.parametrize("grant", sorted(EXPIRED_GRANTS))
async def test_an_expired_consent_or_break_glass_window_gives_no_access(
    grant: str, client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    doctor, patient = tenant[Role.DOCTOR], tenant[Role.PATIENT]
    await app_pool.execute(
        EXPIRED_GRANTS[grant], patient.clinic_id, patient.user_id, doctor.user_id
    )
    await assert_problem(
        await client.get(notes_of(patient), headers=doctor.headers), 403, "forbidden"
    )


async def test_an_organisation_consent_covers_the_clinics_clinicians(
    client: Client, tenant: Tenant
) -> None:
    patient, nurse = tenant[Role.PATIENT], tenant[Role.NURSE]
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/consents",
        json={"grantee_clinic_id": str(patient.clinic_id), "scope": "all", "expires_at": soon()},
        headers=patient.headers,
    )
    assert resp.status == 201, await resp.text()
    assert (await client.get(notes_of(patient), headers=nurse.headers)).status == 200


async def test_only_the_patient_manages_their_consents(client: Client, tenant: Tenant) -> None:
    patient, other = tenant[Role.PATIENT], tenant.other_patient
    assert other is not None
    body = {
        "grantee_user_id": str(tenant[Role.DOCTOR].user_id),
        "scope": "all",
        "expires_at": soon(),
    }
    path = f"/api/v1/patients/{patient.user_id}/consents"
    await assert_problem(
        await client.post(path, json=body, headers=other.headers), 404, "not_found"
    )
    await assert_problem(
        await client.post(path, json=body, headers=tenant[Role.DOCTOR].headers), 403, "forbidden"
    )


async def test_break_glass_is_audited_loudly_and_told_to_the_patient(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    doctor, patient = tenant[Role.DOCTOR], tenant[Role.PATIENT]
    reason = "Unconscious on arrival, need allergies " + doctor.email
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/break-glass",
        json={"reason": reason, "scope": "notes"},
        headers=doctor.headers,
    )
    assert resp.status == 201, await resp.text()
    access = await resp.json()
    assert (await client.get(notes_of(patient), headers=doctor.headers)).status == 200
    await chained(app_pool)
    rows = await app_pool.fetch(
        "SELECT action, detail::text AS detail FROM audit_log WHERE actor_id = $1 ORDER BY seq",
        doctor.user_id,
    )
    actions = [r["action"] for r in rows]
    assert "record.break_glass" in actions
    assert "record.break_glass_use" in actions  # the read on it is flagged too
    assert all(reason not in r["detail"] for r in rows)  # the reason is never in the trail
    notice = await app_pool.fetchrow(
        "SELECT kind, payload::text AS payload FROM notification_outbox WHERE user_id = $1 "
        "AND kind = 'break_glass_access'",
        patient.user_id,
    )
    assert notice is not None
    assert access["access_id"] in notice["payload"]
    stored = await app_pool.fetchval(
        "SELECT reason_ct FROM break_glass_accesses WHERE id = $1::uuid", access["access_id"]
    )
    assert reason.encode() not in stored


async def test_break_glass_needs_a_reason_and_a_clinician(client: Client, tenant: Tenant) -> None:
    patient = tenant[Role.PATIENT]
    path = f"/api/v1/patients/{patient.user_id}/break-glass"
    resp = await client.post(path, json={"reason": "short"}, headers=tenant[Role.DOCTOR].headers)
    await assert_problem(resp, 400, "validation_failed")
    resp = await client.post(
        path, json={"reason": "a long enough reason"}, headers=tenant[Role.ADMIN].headers
    )
    await assert_problem(resp, 403, "forbidden")


async def test_another_clinics_doctor_cannot_break_the_glass(
    client: Client, tenant: Tenant, other_tenant: Tenant
) -> None:
    resp = await client.post(
        f"/api/v1/patients/{tenant[Role.PATIENT].user_id}/break-glass",
        json={"reason": "a long enough reason"},
        headers=other_tenant[Role.DOCTOR].headers,
    )
    await assert_problem(resp, 404, "not_found")


async def test_a_guardian_acts_for_a_child_but_not_for_an_adult_stranger(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    parent = tenant[Role.PATIENT]
    child, household = await child_of(client, app_pool, tenant, "read", "write")
    adult = await login(client, await make_user(app_pool, tenant.clinic_id, Role.PATIENT))
    await app_pool.execute(
        "UPDATE users SET date_of_birth = '1980-01-01' WHERE id = $1", adult.user_id
    )
    # An adult is no one's dependant without a documented legal basis.
    resp = await add_member(
        client, tenant, household, adult, kind="dependant", permissions=["read"]
    )
    await assert_problem(resp, 422, "validation_failed")

    assert (await client.get(notes_of(child), headers=parent.headers)).status == 200
    vital = {
        "kind": "weight",
        "value": 31.5,
        "unit": "kg",
        "measured_at": datetime.now(UTC).isoformat(),
    }
    resp = await client.post(
        f"/api/v1/patients/{child.user_id}/vitals", json=vital, headers=parent.headers
    )
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["source"] == "patient"
    await assert_problem(
        await client.get(notes_of(adult), headers=parent.headers), 404, "not_found"
    )
    # Without the consent permission the guardian cannot share the child's record.
    resp = await client.post(
        f"/api/v1/patients/{child.user_id}/consents",
        json={
            "grantee_user_id": str(tenant[Role.DOCTOR].user_id),
            "scope": "all",
            "expires_at": soon(),
        },
        headers=parent.headers,
    )
    await assert_problem(resp, 404, "not_found")
    # Removed from the household: access ends at the next request.
    resp = await client.post(
        f"/api/v1/households/{household}/members/{parent.user_id}/remove",
        headers=tenant[Role.RECEPTIONIST].headers,
    )
    assert resp.status == 200, await resp.text()
    await assert_problem(
        await client.get(notes_of(child), headers=parent.headers), 404, "not_found"
    )


async def test_the_patient_reads_their_own_record(client: Client, tenant: Tenant) -> None:
    patient = tenant[Role.PATIENT]
    assert (await client.get(notes_of(patient), headers=patient.headers)).status == 200
    other = tenant.other_patient
    assert other is not None
    await assert_problem(
        await client.get(notes_of(other), headers=patient.headers), 404, "not_found"
    )


async def test_a_consent_to_another_organisation_lets_its_clinicians_in(
    client: Client, tenant: Tenant, other_tenant: Tenant
) -> None:
    patient, elsewhere = tenant[Role.PATIENT], other_tenant[Role.DOCTOR]
    await assert_problem(
        await client.get(notes_of(patient), headers=elsewhere.headers), 404, "not_found"
    )
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/consents",
        json={
            "grantee_clinic_id": str(other_tenant.clinic_id),
            "scope": "notes",
            "expires_at": soon(),
        },
        headers=patient.headers,
    )
    assert resp.status == 201, await resp.text()
    assert (await client.get(notes_of(patient), headers=elsewhere.headers)).status == 200
    # Only the consented part: the clinical summary stays closed.
    summary = f"/api/v1/patients/{patient.user_id}/clinical-summary"
    await assert_problem(await client.get(summary, headers=elsewhere.headers), 404, "not_found")
