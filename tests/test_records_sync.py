"""Care plans, and the change feed offline apps sync from (GET /api/v1/sync)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from teleconsult.core.identity import Role
from tests.recordskit import Client, give_care
from tests.world import Account, Tenant, assert_problem


def plan_body(days: int = 90) -> dict[str, Any]:
    return {
        "plan": {"title": "Hypertension", "goals": ["BP under 140/90"], "activities": ["Walk"]},
        "starts_on": date.today().isoformat(),
        "expires_at": (datetime.now(UTC) + timedelta(days=days)).isoformat(),
    }


async def test_a_care_plan_has_an_expiry_and_can_be_ended(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    await give_care(app_pool, doctor, patient)
    path = f"/api/v1/patients/{patient.user_id}/care-plans"
    resp = await client.post(path, json=plan_body(days=-1), headers=doctor.headers)
    body = await assert_problem(resp, 422, "validation_failed")
    assert body["errors"][0]["field"] == "body.expires_at"
    resp = await client.post(path, json=plan_body(), headers=doctor.headers)
    assert resp.status == 201, await resp.text()
    plan = await resp.json()
    assert plan["status"] == "active"
    resp = await client.post(f"{path}/{plan['id']}/end", headers=doctor.headers)
    assert (await resp.json())["status"] == "ended"
    resp = await client.get(path, headers=patient.headers)
    assert [p["plan"]["title"] for p in (await resp.json())["items"]] == ["Hypertension"]


async def _sync(client: Client, who: Account, since: int = 0, limit: int = 200) -> Any:
    resp = await client.get(
        "/api/v1/sync", params={"since": str(since), "limit": str(limit)}, headers=who.headers
    )
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_sync_returns_what_changed_since_the_cursor_in_pages(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    await give_care(app_pool, doctor, patient)
    # The care team membership is a change too (tests/test_records_gaps.py): start after it.
    start = await _sync(client, patient)
    assert [c["kind"] for c in start["changes"]] == ["care_team"]
    notes = f"/api/v1/patients/{patient.user_id}/notes"
    first = await (await client.post(notes, json={"body": "One."}, headers=doctor.headers)).json()
    vital = {"kind": "spo2", "value": 97, "unit": "%", "measured_at": datetime.now(UTC).isoformat()}
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/vitals", json=vital, headers=patient.headers
    )
    assert resp.status == 201
    page = await _sync(client, patient, since=start["next_cursor"], limit=1)
    assert [c["kind"] for c in page["changes"]] == ["note"]
    assert page["changes"][0]["data"]["body"] == "One." and not page["complete"]
    rest = await _sync(client, patient, since=page["next_cursor"])
    assert [c["kind"] for c in rest["changes"]] == ["vital"] and rest["complete"]
    # An amendment shows as a change after the cursor the app holds.
    resp = await client.post(
        f"{notes}/{first['id']}/amendments", json={"body": "One, amended."}, headers=doctor.headers
    )
    assert resp.status == 201
    news = await _sync(client, patient, since=rest["next_cursor"])
    assert [(c["kind"], c["data"]["body"], c["data"]["version"]) for c in news["changes"]] == [
        ("note", "One, amended.", 2)
    ]
    assert (await _sync(client, doctor, since=rest["next_cursor"]))["changes"] == news["changes"]


async def test_sync_leaves_out_what_the_caller_may_not_see(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient, doctor, nurse = tenant[Role.PATIENT], tenant[Role.DOCTOR], tenant[Role.NURSE]
    other = tenant.other_patient
    assert other is not None
    await give_care(app_pool, doctor, patient)
    await give_care(app_pool, doctor, other)
    for who in (patient, other):
        resp = await client.post(
            f"/api/v1/patients/{who.user_id}/notes",
            json={"body": "Private."},
            headers=doctor.headers,
        )
        assert resp.status == 201
    mine = await _sync(client, patient)
    assert {c["patient_id"] for c in mine["changes"]} == {str(patient.user_id)}
    assert (await _sync(client, nurse))["changes"] == []  # no basis on either
    # A consent to vitals only: the nurse still sees no note.
    await app_pool.execute(
        "INSERT INTO consents (clinic_id, patient_id, grantee_user_id, scope, granted_by, "
        "expires_at) VALUES ($1, $2, $3, 'vitals', $2, now() + interval '1 day')",
        patient.clinic_id,
        patient.user_id,
        nurse.user_id,
    )
    assert (await _sync(client, nurse))["changes"] == []
    await assert_problem(
        await client.get("/api/v1/sync", headers=tenant[Role.ADMIN].headers), 403, "forbidden"
    )
