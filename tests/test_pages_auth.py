"""The browser session transport (issue 12, part A): with ``X-Session-Transport: cookie``
the refresh token travels in an HttpOnly, SameSite=Strict cookie scoped to
``/api/v1/auth/``, exchanged at ``/api/v1/auth/session/refresh``; the JSON token API
is unchanged."""

from __future__ import annotations

from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.server.app import create_app
from tests.conftest import settings_env
from tests.world import PASSWORD, Tenant, assert_problem

Client = TestClient[Any, Any]
BROWSER = {"X-Session-Transport": "cookie"}
REFRESH = "/api/v1/auth/session/refresh"


def _refresh_cookie(resp: Any) -> Any:
    """The tc_refresh morsel of a response's Set-Cookie headers."""
    for header in resp.headers.getall("Set-Cookie", []):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if "tc_refresh" in jar:
            return jar["tc_refresh"]
    return None


async def _browser_login(client: Client, email: str) -> Any:
    client.session.cookie_jar.clear()
    resp = await client.post(
        "/api/v1/auth/login", json={"email": email, "password": PASSWORD}, headers=BROWSER
    )
    assert resp.status == 200, await resp.text()
    return resp


async def _refresh(client: Client, token: str, **headers: str) -> Any:
    client.session.cookie_jar.clear()
    return await client.post(
        REFRESH, headers={**BROWSER, "Cookie": f"tc_refresh={token}", **headers}
    )


async def test_cookie_sign_in_keeps_the_refresh_token_out_of_the_body(
    client: Client, tenant: Tenant
) -> None:
    resp = await _browser_login(client, tenant[Role.PATIENT].email)
    body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "user", "session_transport"}
    assert body["user"]["email"] == tenant[Role.PATIENT].email
    cookie = _refresh_cookie(resp)
    assert cookie is not None and len(cookie.value) > 20
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/api/v1/auth/"
    assert not cookie["secure"], "plain http: a Secure cookie would never come back"
    assert int(cookie["max-age"]) > 3600
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status == 200


async def test_json_sign_in_is_unchanged(client: Client, tenant: Tenant) -> None:
    client.session.cookie_jar.clear()
    resp = await client.post(
        "/api/v1/auth/login", json={"email": tenant[Role.DOCTOR].email, "password": PASSWORD}
    )
    body = await resp.json()
    assert {"access_token", "refresh_token", "device_token"} <= set(body)
    assert _refresh_cookie(resp) is None
    again = await client.post("/api/v1/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert again.status == 200 and "refresh_token" in await again.json()


async def test_the_cookie_refreshes_once_and_rotates(client: Client, tenant: Tenant) -> None:
    first = _refresh_cookie(await _browser_login(client, tenant[Role.PATIENT].email)).value
    resp = await _refresh(client, first)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert "refresh_token" not in body and body["access_token"]
    second = _refresh_cookie(resp)
    assert second is not None and second.value != first and second["httponly"]
    assert (await _refresh(client, second.value)).status == 200


async def test_a_reused_cookie_ends_the_session(client: Client, tenant: Tenant) -> None:
    first = _refresh_cookie(await _browser_login(client, tenant[Role.PATIENT].email)).value
    second = _refresh_cookie(await _refresh(client, first)).value
    await assert_problem(await _refresh(client, first), 401, "refresh_reused")
    # The whole family ended: the newer cookie is refused too.
    await assert_problem(await _refresh(client, second), 401, "refresh_invalid")


async def test_refresh_without_the_custom_header_is_refused(client: Client, tenant: Tenant) -> None:
    token = _refresh_cookie(await _browser_login(client, tenant[Role.PATIENT].email)).value
    client.session.cookie_jar.clear()
    resp = await client.post(REFRESH, headers={"Cookie": f"tc_refresh={token}"})
    await assert_problem(resp, 403, "forbidden")
    # The cookie was not spent by the refused request.
    assert (await _refresh(client, token)).status == 200


async def test_refresh_from_another_origin_is_refused(client: Client, tenant: Tenant) -> None:
    token = _refresh_cookie(await _browser_login(client, tenant[Role.PATIENT].email)).value
    for origin in ("https://evil.example", "null"):
        await assert_problem(await _refresh(client, token, Origin=origin), 403, "forbidden")
    own = f"http://{client.server.host}:{client.server.port}"
    assert (await _refresh(client, token, Origin=own)).status == 200


async def test_refresh_without_a_cookie_is_unauthenticated(client: Client) -> None:
    client.session.cookie_jar.clear()
    await assert_problem(await client.post(REFRESH, headers=BROWSER), 401, "refresh_invalid")
    await assert_problem(await _refresh(client, "x" * 300), 401, "refresh_invalid")
    await assert_problem(await _refresh(client, "not-a-token"), 401, "refresh_invalid")


async def test_cookie_sign_out_clears_the_cookie_and_ends_the_session(
    client: Client, tenant: Tenant
) -> None:
    resp = await _browser_login(client, tenant[Role.RECEPTIONIST].email)
    token = _refresh_cookie(resp).value
    access = (await resp.json())["access_token"]
    out = await client.post(
        "/api/v1/auth/logout", headers={**BROWSER, "Authorization": f"Bearer {access}"}
    )
    assert out.status == 204
    cleared = _refresh_cookie(out)
    assert cleared is not None and cleared.value == "" and cleared["path"] == "/api/v1/auth/"
    assert cleared["max-age"] in ("0", 0)
    await assert_problem(await _refresh(client, token), 401, "refresh_invalid")


async def test_json_sign_out_sets_no_cookie(client: Client, tenant: Tenant) -> None:
    out = await client.post("/api/v1/auth/logout", headers=tenant[Role.NURSE].headers)
    assert out.status == 204
    assert _refresh_cookie(out) is None


async def test_cookie_is_secure_behind_an_https_public_url(
    aiohttp_client: Any, database_url: str, tmp_path: Path, tenant: Tenant
) -> None:
    settings = load_settings(
        settings_env(database_url, tmp_path / "https", PUBLIC_URL="https://clinic.example")
    )
    https_client = await aiohttp_client(create_app(settings))
    resp = await https_client.post(
        "/api/v1/auth/login",
        json={"email": tenant[Role.ADMIN].email, "password": PASSWORD},
        headers=BROWSER,
    )
    assert resp.status == 200, await resp.text()
    assert _refresh_cookie(resp)["secure"] is True
