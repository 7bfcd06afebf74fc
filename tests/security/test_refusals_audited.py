"""Refused authorization attempts are audit rows of their own, and a flood stays bounded.

Before, a 403 or a 404 for another clinic's object left no trace in the audit trail.
Now each is an ``access.refused`` row (outcome ``denied``) naming the actor, the
policy action and the target, written in its own transaction; past
``AUDIT_REFUSALS_PER_MINUTE`` rows per actor and action in a minute, one more row says
that further refusals were not recorded, and the metric still counts them all.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from teleconsult.core.identity import Role
from tests.security.test_crafted_input import Member, members, running
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow

PER_MINUTE = 5
FLOOD = 1000
COUNTER = 'teleconsult_authz_refusals_total{status="403"}'


@pytest.fixture
async def server(fresh_db: str, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    async with running(fresh_db, tmp_path, AUDIT_REFUSALS_PER_MINUTE=str(PER_MINUTE)) as live:
        yield live


async def _refused_rows(dsn: str, actor: str) -> list[dict[str, Any]]:
    """The actor's ``access.refused`` rows, once the sequencer has chained the intake."""
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(60):
            while True:  # the sequencer chains the intake in batches
                if not await conn.fetchval("SELECT count(*) FROM audit_intake"):
                    break
                await asyncio.sleep(0.05)
        rows = await conn.fetch(
            "SELECT actor_id::text AS actor_id, actor_role, clinic_id::text AS clinic_id, "
            "object_type, object_id, outcome, detail::text AS detail FROM audit_log "
            "WHERE action = 'access.refused' AND actor_id = $1::uuid ORDER BY seq",
            actor,
        )
    finally:
        await conn.close()
    return [dict(row) | {"detail": json.loads(row["detail"])} for row in rows]


async def _get(http: aiohttp.ClientSession, path: str, who: Member) -> int:
    async with http.get(path, headers=who.headers) as resp:
        await resp.read()
        return resp.status


async def test_a_forbidden_request_leaves_one_row_naming_actor_action_and_target(
    server: ServerProcess, fresh_db: str
) -> None:
    clinic, people = await members(fresh_db, server.base_url, [Role.NURSE, Role.PATIENT])
    nurse, patient = people[Role.NURSE], people[Role.PATIENT]
    async with aiohttp.ClientSession(server.base_url) as http:
        # A nurse may not manage users (403); the target is the user in the path.
        assert await _get(http, f"/api/v1/users/{patient.user_id}", nurse) == 403
    (row,) = await _refused_rows(fresh_db, nurse.user_id)
    assert row["actor_role"] == "nurse"
    # An installation-level row: the target may be another clinic's (see api/refusals.py).
    assert row["clinic_id"] is None
    assert row["outcome"] == "denied"
    assert (row["object_type"], row["object_id"]) == ("user", patient.user_id)
    assert row["detail"] == {
        "policy_action": "user.read",
        "operation": "getUser",
        "status": 403,
        "code": "forbidden",
        "actor_clinic_id": clinic,
    }


async def test_another_clinics_object_is_a_404_and_a_refused_row(
    server: ServerProcess, fresh_db: str
) -> None:
    _, ours = await members(fresh_db, server.base_url, [Role.DOCTOR])
    _, theirs = await members(fresh_db, server.base_url, [Role.PATIENT])
    doctor, stranger = ours[Role.DOCTOR], theirs[Role.PATIENT]
    async with aiohttp.ClientSession(server.base_url) as http:
        assert await _get(http, f"/api/v1/patients/{stranger.user_id}", doctor) == 404
        # A missing object is a plain 404, not a refusal.
        missing = "00000000-0000-4000-8000-000000000000"
        assert await _get(http, f"/api/v1/patients/{missing}", doctor) == 404
    (row,) = await _refused_rows(fresh_db, doctor.user_id)
    assert (row["object_type"], row["object_id"]) == ("patient", stranger.user_id)
    assert row["detail"]["policy_action"] == "patient.read"
    assert (row["detail"]["status"], row["detail"]["code"]) == (404, "not_found")


async def test_a_flood_of_refusals_leaves_a_bounded_number_of_rows(
    server: ServerProcess, fresh_db: str
) -> None:
    _, people = await members(fresh_db, server.base_url, [Role.PATIENT])
    patient = people[Role.PATIENT]
    started = time.monotonic()
    async with aiohttp.ClientSession(server.base_url) as http:

        async def refuse(count: int) -> list[int]:
            return [await _get(http, "/api/v1/audit", patient) for _ in range(count)]

        statuses = [
            s
            for batch in await asyncio.gather(*[refuse(FLOOD // 10) for _ in range(10)])
            for s in batch
        ]
        async with http.get("/metrics") as resp:
            metrics = await resp.text()
    minutes = math.ceil((time.monotonic() - started) / 60) + 1
    assert statuses == [403] * FLOOD
    rows = await _refused_rows(fresh_db, patient.user_id)
    # Per sliding minute: PER_MINUTE rows, then one saying more were not recorded.
    marked = [row for row in rows if row["detail"].get("suppressed")]
    assert PER_MINUTE <= len(rows) - len(marked) <= PER_MINUTE * minutes, len(rows)
    assert 1 <= len(marked) <= minutes, marked
    assert marked[0]["detail"]["limit_per_minute"] == PER_MINUTE
    counted = [line for line in metrics.splitlines() if line.startswith(COUNTER)]
    assert counted == [f"{COUNTER} {float(FLOOD)}"], counted
