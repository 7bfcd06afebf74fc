"""The app starts against the real database and serves its basic routes."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.world import Tenant


async def test_healthz_answers_ok(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_me_returns_the_signed_in_user(client: TestClient[Any, Any], tenant: Tenant) -> None:
    from teleconsult.core.identity import Role

    doctor = tenant[Role.DOCTOR]
    resp = await client.get("/api/v1/me", headers=doctor.headers)
    assert resp.status == 200
    body = await resp.json()
    assert body["id"] == str(doctor.user_id)
    assert body["role"] == "doctor"
