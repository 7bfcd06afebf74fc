"""HTTP conventions: problem+json errors, limits, pagination, OpenAPI in step with routes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.server.app import create_app
from tests.conftest import settings_env
from tests.dbutil import MQTT_URL, REDIS_URL
from tests.world import Tenant, assert_problem, make_user

# Served outside the declared operations on purpose: the document itself and
# the Prometheus exposition (text, not JSON).
# /socket.io/ is engine.io's endpoint for the /chat and /signal namespaces (docs/protocol.md).
UNDOCUMENTED = {
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/socket.io/"),
    ("POST", "/socket.io/"),
    ("OPTIONS", "/socket.io/"),
}


async def test_malformed_json_is_a_clear_error(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/api/v1/auth/login", data=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    await assert_problem(resp, 400, "malformed_json")


async def test_a_body_that_is_not_json_is_refused(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/api/v1/auth/login", data="email=a&password=b")
    await assert_problem(resp, 415, "unsupported_media_type")


async def test_an_oversized_body_is_refused(client: TestClient[Any, Any]) -> None:
    huge = io.BytesIO(b'{"email": "' + b"a" * (2 * 1024 * 1024) + b'"}')
    resp = await client.post(
        "/api/v1/auth/login", data=huge, headers={"Content-Type": "application/json"}
    )
    await assert_problem(resp, 413, "payload_too_large")


async def test_validation_errors_name_the_fields(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/api/v1/auth/login", json={"email": 42, "extra": True})
    body = await assert_problem(resp, 400, "validation_failed")
    fields = {error["field"] for error in body["errors"]}
    assert {"body.email", "body.password", "body.extra"} <= fields


async def test_wrong_types_are_not_coerced(client: TestClient[Any, Any], tenant: Tenant) -> None:
    resp = await client.get("/api/v1/patients?limit=abc", headers=tenant[Role.DOCTOR].headers)
    body = await assert_problem(resp, 400, "validation_failed")
    assert body["errors"][0]["field"] == "query.limit"
    patch = await client.patch(
        "/api/v1/me", json={"full_name": 12345}, headers=tenant[Role.DOCTOR].headers
    )
    await assert_problem(patch, 400, "validation_failed")


async def test_explicit_null_for_a_required_field_is_refused(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    resp = await client.patch(
        "/api/v1/me", json={"full_name": None}, headers=tenant[Role.NURSE].headers
    )
    await assert_problem(resp, 400, "validation_failed")
    me = await client.get("/api/v1/me", headers=tenant[Role.NURSE].headers)
    assert (await me.json())["full_name"] == "Test Nurse"


async def test_unknown_paths_and_methods_are_problems(client: TestClient[Any, Any]) -> None:
    await assert_problem(await client.get("/api/v1/nothing-here"), 404, "not_found")
    resp = await client.delete("/api/v1/me")
    await assert_problem(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]


async def test_cursor_pagination_walks_every_item_once(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    for _ in range(5):
        await make_user(app_pool, tenant.clinic_id, Role.PATIENT)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        resp = await client.get(f"/api/v1/patients?{query}", headers=tenant[Role.ADMIN].headers)
        assert resp.status == 200
        page = await resp.json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 7  # two from the tenant fixture, five here
    assert pages == 4


async def test_a_forged_cursor_is_refused(client: TestClient[Any, Any], tenant: Tenant) -> None:
    resp = await client.get(
        "/api/v1/patients?cursor=not-a-cursor", headers=tenant[Role.ADMIN].headers
    )
    await assert_problem(resp, 400, "invalid_cursor")


async def test_patient_search_finds_by_name_and_phone_within_the_clinic(
    client: TestClient[Any, Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    headers = tenant[Role.RECEPTIONIST].headers
    by_phone = await client.get("/api/v1/patients?q=0700 000", headers=headers)
    ids = {item["id"] for item in (await by_phone.json())["items"]}
    assert str(tenant[Role.PATIENT].user_id) in ids
    assert str(other_tenant[Role.PATIENT].user_id) not in ids
    by_name = await client.get("/api/v1/patients?q=nobody-by-this-name", headers=headers)
    assert (await by_name.json())["items"] == []


async def test_openapi_document_matches_the_routes(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/openapi.json")
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    served = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert documented == served - UNDOCUMENTED
    operation_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


async def test_every_response_carries_a_request_id(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert resp.headers["X-Request-ID"] == "trace-123"
    error = await client.get("/api/v1/me")
    assert len(error.headers["X-Request-ID"]) >= 16


async def test_metrics_count_requests_by_route_template(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    await client.get(f"/api/v1/patients/{patient.user_id}", headers=patient.headers)
    text = await (await client.get("/metrics")).text()
    assert 'route="/api/v1/patients/{patient_id}"' in text
    assert str(patient.user_id) not in text
    assert "teleconsult_http_request_duration_seconds_bucket" in text
    assert "teleconsult_event_loop_lag_seconds" in text


async def test_readyz_checks_database_bus_and_broker(
    aiohttp_client: Any, database_url: str, tmp_path: Path
) -> None:
    settings = load_settings(
        settings_env(database_url, tmp_path, REDIS_URL=REDIS_URL, MQTT_URL=MQTT_URL)
    )
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {
        "status": "ready",
        "checks": {"database": True, "bus": True, "broker": True},
    }


async def test_readyz_reports_an_unreachable_broker(
    aiohttp_client: Any, database_url: str, tmp_path: Path
) -> None:
    settings = load_settings(settings_env(database_url, tmp_path, MQTT_URL="mqtt://127.0.0.1:1"))
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["broker"] is False
    assert body["checks"]["database"] is True
