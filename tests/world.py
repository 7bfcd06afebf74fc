"""Building test tenants: clinics with one user per role, signed in through the API."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient

from teleconsult.accounts import store
from teleconsult.core.identity import Role
from teleconsult.core.passwords import PasswordHasher
from teleconsult.core.settings import OWASP_MIN_MEMLIMIT_KIB, OWASP_MIN_OPSLIMIT

PASSWORD = "correct-horse-battery-staple"
_hash_cache: dict[str, str] = {}


def password_hash(password: str = PASSWORD) -> str:
    """Hash once per session: argon2id is slow on purpose."""
    if password not in _hash_cache:
        hasher = PasswordHasher(memlimit_kib=OWASP_MIN_MEMLIMIT_KIB, opslimit=OWASP_MIN_OPSLIMIT)
        _hash_cache[password] = hasher.hash_sync(password)
    return _hash_cache[password]


def unique_email(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(6)}@example.test"


@dataclass
class Account:
    user_id: UUID
    clinic_id: UUID
    role: Role
    email: str
    access_token: str = ""
    refresh_token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class Tenant:
    clinic_id: UUID
    users: dict[Role, Account] = field(default_factory=dict)
    other_patient: Account | None = None

    def __getitem__(self, role: Role) -> Account:
        return self.users[role]


async def make_user(
    pool: asyncpg.Pool, clinic_id: UUID, role: Role, *, tag: str = "user"
) -> Account:
    email = unique_email(f"{tag}-{role.value}")
    user = await store.insert_user(
        pool,
        clinic_id=clinic_id,
        email=email,
        password_hash=password_hash(),
        role=role,
        full_name=f"Test {role.value.title()}",
        phone="+254700000000" if role is Role.PATIENT else None,
    )
    assert user is not None
    return Account(user_id=user.id, clinic_id=clinic_id, role=role, email=email)


async def clinic_people(dsn: str, *roles: Role, name: str = "Clinic") -> list[Account]:
    """A new clinic with one user per role in ``roles``, straight into the database at
    ``dsn`` (for tests that run server processes on it); none is signed in."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        clinic = await store.insert_clinic(pool, name=name, timezone="UTC")
        return [await make_user(pool, clinic.id, role) for role in roles]
    finally:
        await pool.close()


async def login(client: TestClient[Any, Any], account: Account) -> Account:
    resp = await client.post(
        "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    account.access_token = body["access_token"]
    account.refresh_token = body["refresh_token"]
    return account


async def bearer_at(base_url: str, account: Account) -> dict[str, str]:
    """Sign ``account`` in at a server process's ``base_url``; its Authorization header."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base_url}/api/v1/auth/login",
            json={"email": account.email, "password": PASSWORD},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        token = (await resp.json())["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def make_tenant(
    pool: asyncpg.Pool, client: TestClient[Any, Any], *, name: str = "Clinic"
) -> Tenant:
    """A clinic with one signed-in user of every role, plus a second patient."""
    clinic = await store.insert_clinic(
        pool, name=f"{name} {secrets.token_hex(3)}", timezone="Africa/Nairobi"
    )
    tenant = Tenant(clinic_id=clinic.id)
    for role in Role:
        tenant.users[role] = await login(client, await make_user(pool, clinic.id, role))
    tenant.other_patient = await login(client, await make_user(pool, clinic.id, Role.PATIENT))
    return tenant


async def assert_problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with this status and machine code."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == "application/problem+json", resp.content_type
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["code"] == code, body
    assert body["status"] == status
    return body


async def log_out(client: TestClient[Any, Any], tenant: Tenant, who: Account) -> str:
    """End ``who``'s session by logging out; the reason live connections are told."""
    resp = await client.post("/api/v1/auth/logout", headers=who.headers)
    assert resp.status == 204, await resp.text()
    return "token_invalid"


async def disable(client: TestClient[Any, Any], tenant: Tenant, who: Account) -> str:
    """End ``who``'s session by disabling the account (as the clinic's admin)."""
    resp = await client.patch(
        f"/api/v1/users/{who.user_id}",
        json={"status": "disabled"},
        headers=tenant[Role.ADMIN].headers,
    )
    assert resp.status == 200, await resp.text()
    return "account_disabled"


# The ways a session ends, for tests that check open connections notice.
SESSION_ENDINGS = {"logout": log_out, "disabled_account": disable}
