"""Login abuse without locking people out, against a real server process.

Before: five wrong passwords for an address locked its account for everyone for 15
minutes, so anyone could keep a doctor out; registering an address that exists in any
clinic answered 409 ``email_taken``; wrong ``current_password`` guesses were unlimited.

After (OWASP's device cookies): a client that signed in to the account before holds a
device token, and its failures count against that token alone; sources without one
(or with a forged, expired or another account's token) share the account's untrusted
bucket, which once full refuses only them. Registration answers alike whether the
address is new or taken, and guesses at the current password are rate-limited.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from teleconsult.accounts import store
from teleconsult.core.identity import Role
from tests.servers import ServerProcess
from tests.world import PASSWORD, Account, make_user

pytestmark = pytest.mark.slow

ATTACKS = 50


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: every test says exactly which cookie it sends.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def _clinic(db: asyncpg.Pool, name: str) -> UUID:
    clinic = await store.insert_clinic(db, name=name, timezone="UTC")
    return clinic.id


async def _login(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    email: str,
    password: str,
    *,
    device_token: str | None = None,
    cookie: str | None = None,
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    body: dict[str, str] = {"email": email, "password": password}
    if device_token is not None:
        body["device_token"] = device_token
    headers = {"Cookie": f"tc_device={cookie}"} if cookie is not None else {}
    async with http.post(
        f"{server.base_url}/api/v1/auth/login", json=body, headers=headers
    ) as resp:
        return resp.status, await resp.json(content_type=None), resp


async def _hammer(
    http: aiohttp.ClientSession,
    server: ServerProcess,
    email: str,
    *,
    device_token: str | None = None,
) -> list[int]:
    statuses = []
    for i in range(ATTACKS):
        status, _, _ = await _login(
            http, server, email, f"guess-{i}-{secrets.token_hex(4)}", device_token=device_token
        )
        statuses.append(status)
    return statuses


async def _device_token(http: aiohttp.ClientSession, server: ServerProcess, who: Account) -> str:
    status, body, _ = await _login(http, server, who.email, PASSWORD)
    assert status == 200, body
    token = body["device_token"]
    assert isinstance(token, str) and token
    return token


async def test_the_owner_with_a_device_token_signs_in_while_the_account_is_attacked(
    server: ServerProcess, db: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    doctor = await make_user(db, await _clinic(db, "Attacked clinic"), Role.DOCTOR)
    token = await _device_token(http, server, doctor)

    statuses = await _hammer(http, server, doctor.email)
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}

    status, body, _ = await _login(http, server, doctor.email, PASSWORD, device_token=token)
    assert status == 200, body
    assert body["user"]["id"] == str(doctor.user_id)

    # Without the token the owner is one of the untrusted while the attack lasts.
    status, body, resp = await _login(http, server, doctor.email, PASSWORD)
    assert status == 429, body
    assert body["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) > 0


async def test_a_browser_gets_its_device_token_as_a_strict_cookie_and_uses_it(
    server: ServerProcess, db: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    nurse = await make_user(db, await _clinic(db, "Browser clinic"), Role.NURSE)
    status, body, resp = await _login(http, server, nurse.email, PASSWORD)
    assert status == 200, body
    jar: SimpleCookie = SimpleCookie()
    jar.load(resp.headers["Set-Cookie"])
    cookie = jar["tc_device"]
    assert cookie.value.split(".")[0] == body["device_token"]
    assert cookie["httponly"] and cookie["secure"]
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/api/v1/auth"
    assert int(cookie["max-age"]) > 0

    assert set((await _hammer(http, server, nurse.email))[5:]) == {429}
    status, body, _ = await _login(http, server, nurse.email, PASSWORD, cookie=cookie.value)
    assert status == 200, body


async def test_a_forged_or_another_accounts_device_token_counts_as_none(
    server: ServerProcess, db: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    clinic = await _clinic(db, "Forgery clinic")
    victim = await make_user(db, clinic, Role.DOCTOR)
    attacker = await make_user(db, clinic, Role.PATIENT)
    victim_token = await _device_token(http, server, victim)
    own_token = await _device_token(http, server, attacker)
    # The right shape and length, signed with nothing the server knows.
    forged = base64.urlsafe_b64encode(secrets.token_bytes(56)).rstrip(b"=").decode()

    with_own = await _hammer(http, server, victim.email, device_token=own_token)
    assert with_own[:5] == [401] * 5 and set(with_own[5:]) == {429}
    with_forged = await _hammer(http, server, victim.email, device_token=forged)
    assert set(with_forged) == {429}
    status, body, _ = await _login(http, server, victim.email, PASSWORD, device_token=forged)
    assert status == 429, body

    status, body, _ = await _login(http, server, victim.email, PASSWORD, device_token=victim_token)
    assert status == 200, body
    # The attacker's own token is no worse for it.
    status, body, _ = await _login(http, server, attacker.email, PASSWORD, device_token=own_token)
    assert status == 200, body


async def test_a_device_tokens_failures_lock_only_that_token(
    server: ServerProcess, db: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    """A stolen device token buys its holder LOGIN_MAX_PER_DEVICE (10) guesses, then it
    counts as none; the owner's other device is untouched."""
    doctor = await make_user(db, await _clinic(db, "Stolen token clinic"), Role.DOCTOR)
    stolen = await _device_token(http, server, doctor)
    other_device = await _device_token(http, server, doctor)

    statuses = await _hammer(http, server, doctor.email, device_token=stolen)
    # Ten on the token's own bucket, then five on the untrusted one, then refused.
    assert statuses[:15] == [401] * 15
    assert set(statuses[15:]) == {429}
    status, body, _ = await _login(http, server, doctor.email, PASSWORD, device_token=stolen)
    assert status == 429, body
    status, body, _ = await _login(http, server, doctor.email, PASSWORD, device_token=other_device)
    assert status == 200, body


async def test_registering_a_taken_address_answers_like_a_new_one(
    server: ServerProcess, db: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    elsewhere = await make_user(db, await _clinic(db, "Clinic A"), Role.PATIENT)
    here = await _clinic(db, "Clinic B")

    async def register(email: str) -> tuple[int, str, str, bytes]:
        body = {
            "clinic_id": str(here),
            "email": email,
            "password": "an-attackers-password",
            "full_name": "Probe",
        }
        async with http.post(f"{server.base_url}/api/v1/auth/register", json=body) as resp:
            return resp.status, resp.content_type, resp.headers["Content-Length"], await resp.read()

    taken = await register(elsewhere.email.upper())
    fresh = await register(f"fresh-{secrets.token_hex(6)}@example.test")
    assert taken == fresh
    assert taken[0] == 202
    assert (
        await db.fetchval(
            "SELECT count(*) FROM users WHERE lower(email) = lower($1)", elsewhere.email
        )
        == 1
    )
    status, _, _ = await _login(http, server, elsewhere.email, PASSWORD)
    assert status == 200
    # The owner, not the one who tried, learns of it (ids only).
    notices = await db.fetch(
        "SELECT kind FROM notification_outbox WHERE user_id = $1", elsewhere.user_id
    )
    assert [n["kind"] for n in notices] == ["registration_attempt"]


async def test_guessing_the_current_password_is_rate_limited(
    server: ServerProcess, db: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    """A stolen access token must not become a password oracle."""
    patient = await make_user(db, await _clinic(db, "Guess clinic"), Role.PATIENT)
    status, body, _ = await _login(http, server, patient.email, PASSWORD)
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    statuses = []
    for i in range(ATTACKS // 5):
        async with http.post(
            f"{server.base_url}/api/v1/me/password",
            json={"current_password": f"guess-{i}-xxxx", "new_password": "a-brand-new-secret"},
            headers=headers,
        ) as resp:
            statuses.append(resp.status)
            retry_after = resp.headers.get("Retry-After")
    assert statuses[:5] == [400] * 5
    assert set(statuses[5:]) == {429}
    assert retry_after is not None and int(retry_after) > 0
