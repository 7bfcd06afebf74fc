"""Accounts: registration, login, rate limits, rotating refresh tokens, roles, audit."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from teleconsult.accounts import device_tokens, store
from teleconsult.accounts.emails import email_key
from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.notifications.channels import WebhookChannel, subject
from teleconsult.scheduling.records import OutboxItem
from teleconsult.server.app import create_app
from tests.auditkit import chained
from tests.conftest import settings_env
from tests.dbutil import REDIS_URL
from tests.recordskit import give_care  # records (issue 14, part R)
from tests.world import (
    PASSWORD,
    Account,
    Tenant,
    assert_problem,
    login,
    make_user,
    password_hash,
    unique_email,
)


async def _audit_rows(pool: asyncpg.Pool, action: str, object_id: str) -> list[asyncpg.Record]:
    await chained(pool)
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT * FROM audit_log WHERE action = $1 AND object_id = $2 ORDER BY seq",
        action,
        object_id,
    )
    return rows


REGISTERED = {
    "status": "accepted",
    "detail": "if the address can be registered, sign in with it and the password you chose",
}


def _registration(clinic_id: object, email: str, password: str = PASSWORD) -> dict[str, str]:
    return {
        "clinic_id": str(clinic_id),
        "email": email,
        "password": password,
        "full_name": "Amina Otieno",
        "date_of_birth": "1990-04-01",
    }


async def test_patient_registers_and_signs_in(client: TestClient[Any, Any], tenant: Tenant) -> None:
    email = unique_email("self")
    resp = await client.post("/api/v1/auth/register", json=_registration(tenant.clinic_id, email))
    assert resp.status == 202, await resp.text()
    assert await resp.json() == REGISTERED
    signed_in = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert signed_in.status == 200, await signed_in.text()
    tokens = await signed_in.json()
    assert tokens["user"]["role"] == "patient"
    assert tokens["user"]["clinic_id"] == str(tenant.clinic_id)
    me = await client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert (await me.json())["email"] == email


async def test_registering_a_taken_email_answers_alike_and_changes_nothing(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    """Taken in this clinic or another (in any case): the answer of a new registration,
    no second account, the owner's password unchanged, a denied audit row."""
    owner = tenant[Role.PATIENT]
    for clinic, spelling in (
        (tenant.clinic_id, owner.email.upper()),
        (other_tenant.clinic_id, owner.email),
    ):
        resp = await client.post(
            "/api/v1/auth/register",
            json=_registration(clinic, spelling, password="an-attackers-password"),
        )
        assert resp.status == 202, await resp.text()
        assert await resp.json() == REGISTERED
    count = await app_pool.fetchval(
        "SELECT count(*) FROM users WHERE lower(email) = lower($1)", owner.email
    )
    assert count == 1
    hijack = await client.post(
        "/api/v1/auth/login", json={"email": owner.email, "password": "an-attackers-password"}
    )
    await assert_problem(hijack, 401, "invalid_credentials")
    rows = await _audit_rows(app_pool, "user.register", str(owner.user_id))
    assert [(r["outcome"], r["detail"]["reason"]) for r in rows] == [
        ("denied", "email_exists"),
        ("denied", "email_exists"),
    ]
    assert [r["detail"]["same_clinic"] for r in rows] == [True, False]
    # The owner is told, once for both attempts, through the outbox: ids only.
    notices = await app_pool.fetch(
        "SELECT kind, user_id, thread_id, appointment_id, payload::text AS payload "
        "FROM notification_outbox WHERE user_id = $1",
        owner.user_id,
    )
    assert [dict(n) for n in notices] == [
        {
            "kind": "registration_attempt",
            "user_id": owner.user_id,
            "thread_id": None,
            "appointment_id": None,
            "payload": "{}",
        }
    ]


async def test_registrations_are_limited_per_address(
    aiohttp_client: Any, database_url: str, tmp_path: Path, tenant: Tenant
) -> None:
    strict = await _client_for(aiohttp_client, database_url, tmp_path, REGISTER_MAX_PER_ADDRESS="2")
    for _ in range(2):
        resp = await strict.post(
            "/api/v1/auth/register", json=_registration(tenant.clinic_id, unique_email("burst"))
        )
        assert resp.status == 202, await resp.text()
    resp = await strict.post(
        "/api/v1/auth/register", json=_registration(tenant.clinic_id, unique_email("burst"))
    )
    await assert_problem(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) > 0


async def test_registration_for_an_unknown_clinic_is_refused(client: TestClient[Any, Any]) -> None:
    resp = await client.post(
        "/api/v1/auth/register",
        json={
            "clinic_id": "00000000-0000-4000-8000-000000000000",
            "email": unique_email("lost"),
            "password": PASSWORD,
            "full_name": "Nobody",
        },
    )
    await assert_problem(resp, 404, "not_found")


async def test_password_is_stored_as_argon2id_at_owasp_cost_or_more(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    stored = await app_pool.fetchval(
        "SELECT password_hash FROM users WHERE id = $1", tenant[Role.DOCTOR].user_id
    )
    match = re.match(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=1\$", stored)
    assert match, stored
    assert int(match[1]) >= 19 * 1024 and int(match[2]) >= 2
    assert PASSWORD not in stored


async def test_wrong_password_is_refused_and_audited(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    doctor = tenant[Role.DOCTOR]
    resp = await client.post(
        "/api/v1/auth/login", json={"email": doctor.email, "password": "not-the-password"}
    )
    await assert_problem(resp, 401, "invalid_credentials")
    rows = await _audit_rows(app_pool, "auth.login", str(doctor.user_id))
    assert [r["outcome"] for r in rows] == ["success", "failure"]
    assert rows[-1]["ip"] == "127.0.0.1"


async def test_unknown_email_gets_the_same_answer_as_a_wrong_password(
    client: TestClient[Any, Any],
) -> None:
    resp = await client.post(
        "/api/v1/auth/login", json={"email": unique_email("ghost"), "password": "whatever-123"}
    )
    await assert_problem(resp, 401, "invalid_credentials")


async def test_login_is_rate_limited_per_account(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    nurse = tenant[Role.NURSE]
    for _ in range(5):
        resp = await client.post(
            "/api/v1/auth/login", json={"email": nurse.email, "password": "wrong-password"}
        )
        assert resp.status == 401
    resp = await client.post(
        "/api/v1/auth/login", json={"email": nurse.email, "password": PASSWORD}
    )
    await assert_problem(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) > 0


async def _client_for(aiohttp_client: Any, database_url: str, data_dir: Path, **env: str) -> Any:
    return await aiohttp_client(
        create_app(load_settings(settings_env(database_url, data_dir, **env)))
    )


async def test_login_is_rate_limited_per_address(
    aiohttp_client: Any, database_url: str, tmp_path: Path, tenant: Tenant
) -> None:
    strict = await _client_for(aiohttp_client, database_url, tmp_path, LOGIN_MAX_PER_ADDRESS="3")
    for _ in range(3):
        resp = await strict.post(
            "/api/v1/auth/login", json={"email": unique_email("spray"), "password": "guess-12345"}
        )
        assert resp.status == 401
    resp = await strict.post(
        "/api/v1/auth/login", json={"email": tenant[Role.ADMIN].email, "password": PASSWORD}
    )
    await assert_problem(resp, 429, "rate_limited")


async def test_redis_rate_limit_is_shared_between_server_processes(
    aiohttp_client: Any, database_url: str, tmp_path: Path, tenant: Tenant
) -> None:
    first = await _client_for(
        aiohttp_client, database_url, tmp_path, REDIS_URL=REDIS_URL, LOGIN_MAX_PER_ACCOUNT="3"
    )
    second = await _client_for(
        aiohttp_client, database_url, tmp_path, REDIS_URL=REDIS_URL, LOGIN_MAX_PER_ACCOUNT="3"
    )
    email = tenant[Role.RECEPTIONIST].email
    for server in (first, second, first):
        resp = await server.post(
            "/api/v1/auth/login", json={"email": email, "password": "bad-12345"}
        )
        assert resp.status == 401
    resp = await second.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    await assert_problem(resp, 429, "rate_limited")


async def test_refresh_rotates_the_token_pair(client: TestClient[Any, Any], tenant: Tenant) -> None:
    patient = tenant[Role.PATIENT]
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": patient.refresh_token})
    assert resp.status == 200
    pair = await resp.json()
    assert pair["refresh_token"] != patient.refresh_token
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.status == 200


async def test_reusing_a_refresh_token_revokes_the_whole_family(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    first = await client.post("/api/v1/auth/refresh", json={"refresh_token": patient.refresh_token})
    newest = await first.json()
    replay = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": patient.refresh_token}
    )
    await assert_problem(replay, 401, "refresh_reused")
    # The legitimate holder's newer tokens die with the family.
    after = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": newest["refresh_token"]}
    )
    await assert_problem(after, 401, "refresh_invalid")
    me = await client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {newest['access_token']}"}
    )
    await assert_problem(me, 401, "token_invalid")
    rows = await _audit_rows(app_pool, "auth.refresh", str(patient.user_id))
    assert rows and rows[-1]["outcome"] == "denied"


async def test_an_unknown_refresh_token_is_refused(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/api/v1/auth/refresh", json={"refresh_token": "made-up"})
    await assert_problem(resp, 401, "refresh_invalid")


async def test_logout_ends_the_session_at_once(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    doctor = tenant[Role.DOCTOR]
    resp = await client.post("/api/v1/auth/logout", headers=doctor.headers)
    assert resp.status == 204
    me = await client.get("/api/v1/me", headers=doctor.headers)
    await assert_problem(me, 401, "token_invalid")
    again = await client.post("/api/v1/auth/refresh", json={"refresh_token": doctor.refresh_token})
    await assert_problem(again, 401, "refresh_invalid")


async def test_role_change_applies_at_once_and_is_audited(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    admin = tenant[Role.ADMIN]
    nurse = await login(client, await make_user(app_pool, tenant.clinic_id, Role.NURSE))
    before = await client.get("/api/v1/patients", headers=nurse.headers)
    assert before.status == 200
    resp = await client.patch(
        f"/api/v1/users/{nurse.user_id}", json={"role": "receptionist"}, headers=admin.headers
    )
    assert resp.status == 200
    notes = await client.get(
        f"/api/v1/patients/{tenant[Role.PATIENT].user_id}/notes", headers=nurse.headers
    )
    await assert_problem(notes, 403, "forbidden")
    rows = await _audit_rows(app_pool, "user.role_change", str(nurse.user_id))
    assert len(rows) == 1
    assert rows[0]["actor_id"] == admin.user_id
    assert rows[0]["detail"] == {"old_role": "nurse", "new_role": "receptionist"}


async def test_disabling_a_user_ends_their_sessions(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    victim = await login(client, await make_user(app_pool, tenant.clinic_id, Role.DOCTOR))
    resp = await client.patch(
        f"/api/v1/users/{victim.user_id}",
        json={"status": "disabled"},
        headers=tenant[Role.ADMIN].headers,
    )
    assert resp.status == 200
    me = await client.get("/api/v1/me", headers=victim.headers)
    assert me.status == 401
    again = await client.post(
        "/api/v1/auth/login", json={"email": victim.email, "password": PASSWORD}
    )
    await assert_problem(again, 401, "account_disabled")


async def test_an_admin_cannot_disable_themselves(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    admin = tenant[Role.ADMIN]
    await make_user(app_pool, tenant.clinic_id, Role.ADMIN)
    resp = await client.patch(
        f"/api/v1/users/{admin.user_id}", json={"status": "disabled"}, headers=admin.headers
    )
    await assert_problem(resp, 409, "self_lockout")
    assert (await client.get("/api/v1/me", headers=admin.headers)).status == 200


async def test_the_last_admin_cannot_be_demoted(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    admin = tenant[Role.ADMIN]
    resp = await client.patch(
        f"/api/v1/users/{admin.user_id}", json={"role": "doctor"}, headers=admin.headers
    )
    await assert_problem(resp, 409, "last_admin")
    me = await client.get("/api/v1/me", headers=admin.headers)
    assert (await me.json())["role"] == "admin"


async def test_password_change_needs_the_current_one_and_ends_other_sessions(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    account = await make_user(app_pool, tenant.clinic_id, Role.RECEPTIONIST)
    here = await login(client, account)
    elsewhere_resp = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    elsewhere = await elsewhere_resp.json()
    wrong = await client.post(
        "/api/v1/me/password",
        json={"current_password": "not-it-at-all", "new_password": "a-brand-new-secret"},
        headers=here.headers,
    )
    await assert_problem(wrong, 400, "invalid_credentials")
    ok = await client.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "a-brand-new-secret"},
        headers=here.headers,
    )
    assert ok.status == 204
    assert (await client.get("/api/v1/me", headers=here.headers)).status == 200
    other = await client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {elsewhere['access_token']}"}
    )
    assert other.status == 401
    relogin = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": "a-brand-new-secret"}
    )
    assert relogin.status == 200


async def test_admin_creates_staff_in_their_own_clinic(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    resp = await client.post(
        "/api/v1/users",
        json={
            "email": unique_email("new-doc"),
            "password": PASSWORD,
            "full_name": "Dr New",
            "role": "doctor",
        },
        headers=tenant[Role.ADMIN].headers,
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["clinic_id"] == str(tenant.clinic_id)
    assert body["role"] == "doctor"


async def test_patient_data_reads_are_audited_without_clinical_content(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    doctor = tenant[Role.DOCTOR]
    secret = "CANARY-diagnosis-7f3a"
    await give_care(app_pool, doctor, patient)  # records (issue 14): notes need a care relationship
    created = await client.post(
        f"/api/v1/patients/{patient.user_id}/notes", json={"body": secret}, headers=doctor.headers
    )
    assert created.status == 201
    read = await client.get(f"/api/v1/patients/{patient.user_id}", headers=doctor.headers)
    assert read.status == 200
    await chained(app_pool)
    actions = [
        r["action"]
        for r in await app_pool.fetch(
            "SELECT action FROM audit_log WHERE object_id = $1 AND actor_id = $2 ORDER BY seq",
            str(patient.user_id),
            doctor.user_id,
        )
    ]
    assert actions == ["patient.notes.create", "patient.read"]
    leaked = await app_pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%' || $1 || '%'", secret
    )
    assert leaked == 0


async def test_a_forged_token_is_refused(client: TestClient[Any, Any], tenant: Tenant) -> None:
    import jwt

    forged = jwt.encode(
        {
            "iss": "teleconsult",
            "sub": str(tenant[Role.ADMIN].user_id),
            "sid": "00000000-0000-4000-8000-000000000000",
            "typ": "access",
            "iat": 1,
            "exp": 4102444800,
        },
        "some-other-secret-that-is-long-enough-000",
        algorithm="HS256",
    )
    resp = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {forged}"})
    await assert_problem(resp, 401, "token_invalid")


async def test_an_expired_token_says_so(client: TestClient[Any, Any], tenant: Tenant) -> None:
    from teleconsult.core.tokens import TokenService

    settings_secret = "test-secret-" + "x" * 40
    tokens = TokenService(secret=settings_secret, issuer="teleconsult", access_ttl=60)
    stale = tokens.mint_access(
        user_id=tenant[Role.ADMIN].user_id,
        session_id=tenant[Role.ADMIN].user_id,
        now=1_000_000,
    )
    resp = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {stale}"})
    await assert_problem(resp, 401, "token_expired")


async def test_no_token_gets_unauthenticated(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/v1/me")
    body = await assert_problem(resp, 401, "unauthenticated")
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert "Bearer" in body["detail"]


async def test_wrong_current_passwords_are_rate_limited_per_account(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    account = await login(client, await make_user(app_pool, tenant.clinic_id, Role.NURSE))
    for _ in range(5):
        wrong = await client.post(
            "/api/v1/me/password",
            json={"current_password": "a-guess-12345", "new_password": "a-brand-new-secret"},
            headers=account.headers,
        )
        await assert_problem(wrong, 400, "invalid_credentials")
    # Even the right one waits now: the guesses are what is limited, not the outcome.
    resp = await client.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "a-brand-new-secret"},
        headers=account.headers,
    )
    await assert_problem(resp, 429, "rate_limited")
    assert int(resp.headers["Retry-After"]) > 0
    rows = await _audit_rows(app_pool, "user.password_change", str(account.user_id))
    assert [r["outcome"] for r in rows] == ["failure"] * 5 + ["denied"]


async def _user_with(pool: asyncpg.Pool, tenant: Tenant, role: Role, email: str) -> Account:
    user = await store.insert_user(
        pool,
        clinic_id=tenant.clinic_id,
        email=email,
        password_hash=password_hash(),
        role=role,
        full_name="Spelled Out",
    )
    assert user is not None
    return Account(user_id=user.id, clinic_id=tenant.clinic_id, role=role, email=email)


def _turkish(tag: str) -> str:
    return f"İpek-{tag}-{secrets.token_hex(4)}@Example.test"


async def test_spellings_of_one_address_find_one_user(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    """İ and i + combining dot, ß and ss, upper and lower case: one account."""
    email = _turkish("find").replace("Example", "Straße")
    account = await _user_with(app_pool, tenant, Role.DOCTOR, email)
    local, _, domain = email.partition("@")
    for spelling in (
        email,
        email.upper(),
        "i\u0307" + local[1:] + "@" + domain,
        local.lower() + "@" + domain.replace("ß", "ss"),
    ):
        resp = await client.post(
            "/api/v1/auth/login", json={"email": spelling, "password": PASSWORD}
        )
        assert resp.status == 200, (spelling, await resp.text())
        assert (await resp.json())["user"]["id"] == str(account.user_id)


async def test_spellings_of_one_address_share_one_limiter_bucket(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    email = _turkish("bucket")
    await _user_with(app_pool, tenant, Role.DOCTOR, email)
    local, _, domain = email.partition("@")
    spellings = [email, email.upper(), "i\u0307" + local[1:] + "@" + domain.upper()]
    for i in range(5):
        resp = await client.post(
            "/api/v1/auth/login", json={"email": spellings[i % 3], "password": "wrong-guess-1"}
        )
        await assert_problem(resp, 401, "invalid_credentials")
    for spelling in spellings:
        resp = await client.post(
            "/api/v1/auth/login", json={"email": spelling, "password": PASSWORD}
        )
        await assert_problem(resp, 429, "rate_limited")


async def test_a_spelling_the_database_once_folded_does_not_reach_the_account(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    """Before: the limiter folded with Python (İ -> i̇) and the database with lower()
    (İ -> i), so 'İpek' was a fresh limiter bucket for the account 'ipek'."""
    email = f"ipek-{secrets.token_hex(4)}@example.test"
    await _user_with(app_pool, tenant, Role.DOCTOR, email)
    for _ in range(5):
        resp = await client.post(
            "/api/v1/auth/login", json={"email": email, "password": "wrong-guess-1"}
        )
        await assert_problem(resp, 401, "invalid_credentials")
    variant = "İ" + email[1:]
    resp = await client.post("/api/v1/auth/login", json={"email": variant, "password": PASSWORD})
    assert resp.status != 200, "a spelling variant reached the locked account"


async def test_registering_a_spelling_of_a_taken_address_creates_nothing(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    email = _turkish("reg")
    account = await _user_with(app_pool, tenant, Role.PATIENT, email)
    local, _, domain = email.partition("@")
    variant = "i\u0307" + local[1:].upper() + "@" + domain.lower()
    resp = await client.post(
        "/api/v1/auth/register", json=_registration(tenant.clinic_id, variant, "other-password-1")
    )
    assert resp.status == 202
    assert await resp.json() == REGISTERED
    keys = await app_pool.fetch("SELECT id FROM users WHERE email_key = $1", email_key(variant))
    assert [r["id"] for r in keys] == [account.user_id]


async def test_a_users_list_with_patients_is_one_audit_event_naming_the_reader(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    admin = tenant[Role.ADMIN]
    resp = await client.get("/api/v1/users?role=patient&limit=1", headers=admin.headers)
    assert resp.status == 200
    page = await resp.json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    staff = await client.get("/api/v1/users?role=doctor", headers=admin.headers)
    assert staff.status == 200
    await chained(app_pool)
    rows = await app_pool.fetch(
        "SELECT * FROM audit_log WHERE action = 'patient.list' AND actor_id = $1", admin.user_id
    )
    assert len(rows) == 1
    assert rows[0]["object_type"] == "patient_list"
    assert rows[0]["clinic_id"] == tenant.clinic_id
    assert rows[0]["detail"] == {
        "via": "users",
        "query": "role=patient",
        "results": 1,
        "after": False,
    }


# --- pure parts: the e-mail key and device tokens -------------------------------------


def test_one_key_for_every_spelling_of_an_address() -> None:
    same = ["İpek@Straße.test", "i\u0307pek@STRASSE.test", "İPEK@straße.TEST", " i̇pek@strasse.test"]
    assert {email_key(e) for e in same} == {"i\u0307pek@strasse.test"}
    assert email_key("ipek@strasse.test") != email_key("İpek@strasse.test")
    assert email_key("\ufb01le@example.test") == "file@example.test"


KEY = device_tokens.device_key("test-secret-" + "x" * 40)


def test_a_device_token_is_valid_for_its_account_only_and_until_it_expires() -> None:
    token = device_tokens.mint(KEY, "account-a", now=1_000_000)
    assert len(token.text) == device_tokens.TOKEN_LENGTH
    found = device_tokens.verify(KEY, "account-a", token.text, now=1_000_100, ttl=3600)
    assert found is not None and found.key == token.key
    assert device_tokens.verify(KEY, "account-b", token.text, now=1_000_100, ttl=3600) is None
    assert device_tokens.verify(KEY, "account-a", token.text, now=1_003_601, ttl=3600) is None
    other_key = device_tokens.device_key("another-secret-" + "y" * 40)
    assert device_tokens.verify(other_key, "account-a", token.text, now=1_000_100, ttl=3600) is None


def test_anything_else_is_no_device_token() -> None:
    token = device_tokens.mint(KEY, "account-a", now=1_000_000).text
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    for text in ("", "x", "é" * len(token), "+" * len(token), token[:-1], token + "A", flipped):
        assert device_tokens.verify(KEY, "account-a", text, now=1_000_001, ttl=3600) is None


def test_a_browser_cookie_keeps_the_newest_tokens_of_a_few_accounts() -> None:
    olds = [device_tokens.mint(KEY, f"account-{i}", now=1).text for i in range(6)]
    cookie = olds[0]
    for old in olds[1:]:
        cookie = device_tokens.join_cookie(old, device_tokens.split_cookie(cookie))
    kept = device_tokens.split_cookie(cookie)
    assert kept == olds[::-1][: device_tokens.MAX_PER_COOKIE]
    renewed = device_tokens.mint(KEY, "account-5", now=2).text
    after = device_tokens.split_cookie(
        device_tokens.join_cookie(renewed, kept + ["junk"], drop=olds[5])
    )
    assert after == [renewed, *olds[4:0:-1]]


async def test_a_registration_attempt_notice_is_sent_to_the_owner_by_ids(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    owner = tenant[Role.DOCTOR]
    resp = await client.post(
        "/api/v1/auth/register", json=_registration(tenant.clinic_id, owner.email)
    )
    assert resp.status == 202
    row = await app_pool.fetchrow(
        "SELECT id, kind, due_at FROM notification_outbox WHERE user_id = $1", owner.user_id
    )
    assert row is not None
    item = OutboxItem(
        id=row["id"],
        kind=row["kind"],
        appointment_id=None,
        due_at=row["due_at"],
        payload={},
        attempts=0,
        locked_until=None,
        claimed_by=None,
        sent_at=None,
        cancelled_at=None,
        failed_at=None,
        last_error=None,
        created_at=row["due_at"],
        thread_id=None,
        user_id=owner.user_id,
    )
    assert subject(item) == f"user {owner.user_id}"
    async with aiohttp.ClientSession() as session:
        body = WebhookChannel("http://127.0.0.1:9/", "s" * 32, session).body(item)
    assert json.loads(body) == {
        "id": f"notif-{row['id']}",
        "kind": "registration_attempt",
        "user_id": str(owner.user_id),
        "due_at": row["due_at"].isoformat(),
    }
