"""HTTP conventions: problem+json errors, limits, pagination, OpenAPI in step with routes."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from teleconsult.api.pagination import decode_cursor, encode_cursor
from teleconsult.api.registry import client_address
from teleconsult.core.errors import BadRequest, ErrorCode, Unauthenticated
from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.core.tokens import TokenService
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
    # --- web pages (issue 12, part A): files, not REST operations (docs/pages.md) ---
    ("GET", "/"),
    ("GET", "/{name}.html"),
    ("GET", "/static/{path}"),
    ("GET", "/join/{room_id}"),  # the join link's page (docs/pages.md)
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


# --- crafted input, without a server: cursors, tokens, the client's address ------------


_TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(["\udcff", "\x00", "=", "."]))


@hyp_settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        _TEXT,
        st.binary().map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
            max_leaves=6,
        ).map(lambda value: _cursor_of(value)),
        st.tuples(st.datetimes(timezones=st.timezones()), st.uuids()).map(
            lambda pair: _cursor_of([pair[0].isoformat(), str(pair[1])])
        ),
    )
)
def test_decoding_any_cursor_is_a_pair_in_range_or_invalid_cursor(cursor: str) -> None:
    try:
        decoded = decode_cursor(cursor)
    except BadRequest as exc:
        assert exc.code is ErrorCode.INVALID_CURSOR
        return
    assert decoded is not None
    when, _ = decoded
    # Something asyncpg can send as timestamptz, whatever the offset it came with.
    assert when.utcoffset() == timedelta(0)
    assert 2000 <= when.year < 9000


@hyp_settings(max_examples=50, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)), st.uuids())
def test_an_issued_cursor_decodes_to_what_it_encoded(when: datetime, item: UUID) -> None:
    if not 2000 <= when.year < 9000:
        return
    assert decode_cursor(encode_cursor(when, item)) == (when, item)


def _cursor_of(value: object) -> str:
    raw = json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@hyp_settings(max_examples=200, deadline=None)
@given(_TEXT)
def test_any_token_text_is_a_401_never_a_crash(token: str) -> None:
    tokens = TokenService(secret="s" * 40, issuer="teleconsult", access_ttl=900)
    with pytest.raises(Unauthenticated) as refused:
        tokens.verify_access(token)
    assert refused.value.code in (ErrorCode.TOKEN_INVALID, ErrorCode.TOKEN_EXPIRED)


@pytest.mark.parametrize(
    ("forwarded", "proxies", "expected"),
    [
        # The client wrote the left-most entries; each proxy appended one.
        (["6.6.6.6, 203.0.113.7"], 1, "203.0.113.7"),
        (["6.6.6.6, 203.0.113.7, 10.0.0.2"], 2, "203.0.113.7"),
        (["6.6.6.6", "203.0.113.7"], 1, "203.0.113.7"),  # several headers are one list
        (["2001:db8::1"], 1, "2001:db8::1"),
        (["2001:DB8:0::1"], 1, "2001:db8::1"),  # normalised
        (["203.0.113.7"], 2, "127.0.0.1"),  # fewer entries than proxies: not via them
        (["not-an-address"], 1, "127.0.0.1"),
        (["1.2.3.4:80"], 1, "127.0.0.1"),
        (["6.6.6.6, "], 1, "127.0.0.1"),
        ([], 1, "127.0.0.1"),
        (["6.6.6.6"], None, "127.0.0.1"),  # TRUST_FORWARDED_FOR off
    ],
)
def test_the_client_address_is_counted_from_the_right(
    forwarded: list[str], proxies: int | None, expected: str
) -> None:
    assert client_address(forwarded, "127.0.0.1", trusted_proxies=proxies) == expected
