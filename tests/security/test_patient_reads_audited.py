"""Lists that return patient data are audited, against a real server process.

Before: ``GET /api/v1/users?role=patient`` (and the unfiltered user list, which holds
patients too) returned the clinic's patients and left no trace in the audit trail.
After: every such read, and every patient search, writes one ``patient.list`` event
(not one per row), committed with the read, naming the reader, the kind of query and
how many patients it returned, and never the searched text.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from teleconsult.accounts import store
from teleconsult.core.identity import Role
from tests.auditkit import chained
from tests.servers import ServerProcess
from tests.world import PASSWORD, Account, make_user

pytestmark = pytest.mark.slow


async def _signed_in(http: aiohttp.ClientSession, base: str, who: Account) -> dict[str, str]:
    async with http.post(
        f"{base}/api/v1/auth/login", json={"email": who.email, "password": PASSWORD}
    ) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return {"Authorization": f"Bearer {body['access_token']}"}


async def _clinic(db: asyncpg.Pool) -> tuple[UUID, dict[Role, Account]]:
    clinic = await store.insert_clinic(db, name="Audited clinic", timezone="UTC")
    people = {role: await make_user(db, clinic.id, role) for role in (Role.ADMIN, Role.DOCTOR)}
    for _ in range(3):
        await make_user(db, clinic.id, Role.PATIENT)
    return clinic.id, people


async def _list_events(db: asyncpg.Pool, reader: UUID) -> list[dict[str, Any]]:
    await chained(db)
    rows = await db.fetch(
        "SELECT * FROM audit_log WHERE action = 'patient.list' AND actor_id = $1 ORDER BY seq",
        reader,
    )
    return [{**row, "detail": json.loads(row["detail"])} for row in rows]


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_listing_a_clinics_patients_leaves_one_event_naming_the_reader(
    server: ServerProcess, db: asyncpg.Pool
) -> None:
    clinic_id, people = await _clinic(db)
    admin = people[Role.ADMIN]
    async with aiohttp.ClientSession() as http:
        headers = await _signed_in(http, server.base_url, admin)
        page = await _get(http, f"{server.base_url}/api/v1/users?role=patient", headers)
    assert len(page["items"]) == 3
    rows = await _list_events(db, admin.user_id)
    assert len(rows) == 1
    row = rows[0]
    assert (row["actor_role"], row["clinic_id"], row["object_type"]) == (
        "admin",
        clinic_id,
        "patient_list",
    )
    assert row["detail"] == {"via": "users", "query": "role=patient", "results": 3, "after": False}
    assert row["ip"] == "127.0.0.1"


async def test_the_unfiltered_user_list_counts_the_patients_it_shows(
    server: ServerProcess, db: asyncpg.Pool
) -> None:
    _, people = await _clinic(db)
    admin = people[Role.ADMIN]
    async with aiohttp.ClientSession() as http:
        headers = await _signed_in(http, server.base_url, admin)
        first = await _get(http, f"{server.base_url}/api/v1/users?limit=4", headers)
        rest = await _get(
            http,
            f"{server.base_url}/api/v1/users?limit=4&cursor={first['next_cursor']}",
            headers,
        )
        staff_only = await _get(http, f"{server.base_url}/api/v1/users?role=doctor", headers)
    shown = [u["role"] for u in first["items"] + rest["items"]]
    assert shown.count("patient") == 3 and len(staff_only["items"]) == 1
    rows = await _list_events(db, admin.user_id)
    # One per read that could show patients; the doctors-only list is not one.
    assert [r["detail"]["query"] for r in rows] == ["all_roles", "all_roles"]
    assert [r["detail"]["after"] for r in rows] == [False, True]
    assert sum(r["detail"]["results"] for r in rows) == 3


async def test_a_patient_search_is_one_event_without_the_searched_text(
    server: ServerProcess, db: asyncpg.Pool
) -> None:
    _, people = await _clinic(db)
    doctor = people[Role.DOCTOR]
    canary = f"Canary{secrets.token_hex(4)}"
    async with aiohttp.ClientSession() as http:
        headers = await _signed_in(http, server.base_url, doctor)
        found = await _get(http, f"{server.base_url}/api/v1/patients?q=Test", headers)
        none = await _get(http, f"{server.base_url}/api/v1/patients?q={canary}", headers)
    assert len(found["items"]) == 3 and none["items"] == []
    rows = await _list_events(db, doctor.user_id)
    assert [(r["detail"]["query"], r["detail"]["results"]) for r in rows] == [
        ("search", 3),
        ("search", 0),
    ]
    assert all(r["detail"]["via"] == "patients" for r in rows)
    leaked = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%' || $1 || '%'", canary
    )
    assert leaked == 0
