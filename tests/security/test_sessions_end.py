"""Sessions end everywhere, at once: a logout, a disabling, a password or role change on one
server process closes the user's live /chat and /signal sockets on another.

Two real server processes share PostgreSQL and Redis. Their periodic session re-check is
set to ten minutes, so a socket closed within the test's timeout was closed by the
revocation pushed over the bus, not by the fallback sweep (before this, an open /signal
socket went on joining rooms and getting TURN credentials after its user logged out).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from teleconsult.core.identity import Role
from tests.dbutil import REDIS_URL
from tests.rawsio import raw
from tests.servers import ServerProcess
from tests.signalkit import open_room, raw_signal
from tests.world import PASSWORD, Account, Tenant, clinic_people

pytestmark = pytest.mark.slow

# Far longer than any wait below: only a pushed revocation can close a socket in time.
RECHECK = {"CHAT_AUTH_RECHECK_SECONDS": "600", "REDIS_URL": REDIS_URL}
WITHIN = 15.0
DISABLE = {"status": "disabled"}


@dataclass
class Lab:
    """A clinic (admin, doctor, patient) and two server processes sharing its database."""

    tenant: Tenant
    pool: asyncpg.Pool
    one: ServerProcess
    two: ServerProcess
    http: aiohttp.ClientSession

    async def login(self, role: Role, server: ServerProcess | None = None) -> Account:
        """A fresh login session of the tenant's user of ``role``, holding its tokens."""
        who = self.tenant[role]
        url = (server or self.one).base_url
        body = {"email": who.email, "password": PASSWORD}
        async with self.http.post(f"{url}/api/v1/auth/login", json=body) as resp:
            assert resp.status == 200, await resp.text()
            tokens = await resp.json()
        return replace(
            who, access_token=tokens["access_token"], refresh_token=tokens["refresh_token"]
        )

    async def call(
        self, who: Account, method: str, path: str, status: int, body: Any = None
    ) -> Any:
        """``method path`` on process one as ``who``; the answer must have ``status``."""
        async with self.http.request(
            method, f"{self.one.base_url}{path}", json=body, headers=who.headers
        ) as resp:
            assert resp.status == status, await resp.text()
            return await resp.json() if resp.content_length else None


@pytest.fixture
async def lab(fresh_db: str, tmp_path: Path) -> AsyncIterator[Lab]:
    people = await clinic_people(fresh_db, Role.ADMIN, Role.DOCTOR, Role.PATIENT)
    tenant = Tenant(clinic_id=people[0].clinic_id, users={p.role: p for p in people})
    one = ServerProcess(fresh_db, tmp_path, name="one", **RECHECK)
    two = ServerProcess(fresh_db, tmp_path, name="two", **RECHECK)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    try:
        await asyncio.gather(one.start(), two.start())
        async with aiohttp.ClientSession() as http:
            yield Lab(tenant, pool, one, two, http)
    finally:
        await asyncio.gather(one.stop(), two.stop())
        await pool.close()


async def _closed_with(sock: Any, reason: str) -> None:
    async with asyncio.timeout(WITHIN):
        assert await sock.next_event("bye") == {"reason": reason}
        await sock.gone.wait()


async def _still_open(sock: Any) -> None:
    ack = await sock.call("no_such_event", {})
    assert ack["ok"] is False and not sock.gone.is_set(), ack


async def test_a_logout_on_one_process_closes_chat_and_signal_sockets_on_another(
    lab: Lab,
) -> None:
    room = await open_room(lab.pool, lab.tenant)
    patient = await lab.login(Role.PATIENT)
    other_session = await lab.login(Role.PATIENT)
    on_two = lab.two.base_url
    async with (
        raw(on_two, patient.access_token) as chat,
        raw_signal(on_two, patient.access_token) as signal,
        raw(on_two, other_session.access_token) as bystander,
    ):
        joined = await signal.call("join", {"room_id": room})
        assert joined["ok"], joined
        await lab.call(patient, "POST", "/api/v1/auth/logout", 204)
        await _closed_with(chat, "token_invalid")
        await _closed_with(signal, "token_invalid")
        # Only that login session ended: the user's other one goes on.
        await _still_open(bystander)


async def test_disabling_an_account_closes_every_session_of_it_on_every_process(
    lab: Lab,
) -> None:
    admin = await lab.login(Role.ADMIN)
    first = await lab.login(Role.DOCTOR)
    second = await lab.login(Role.DOCTOR, lab.two)
    async with (
        raw(lab.one.base_url, first.access_token) as on_one,
        raw_signal(lab.two.base_url, second.access_token) as on_two,
    ):
        await lab.call(admin, "PATCH", f"/api/v1/users/{first.user_id}", 200, DISABLE)
        await _closed_with(on_one, "account_disabled")
        await _closed_with(on_two, "account_disabled")


async def test_a_password_change_closes_the_other_sessions_but_not_its_own(lab: Lab) -> None:
    mine = await lab.login(Role.PATIENT)
    stolen = await lab.login(Role.PATIENT)
    async with (
        raw(lab.two.base_url, mine.access_token) as own,
        raw_signal(lab.two.base_url, stolen.access_token) as thief,
    ):
        change = {"current_password": PASSWORD, "new_password": "a-new-long-passphrase-1"}
        await lab.call(mine, "POST", "/api/v1/me/password", 204, change)
        await _closed_with(thief, "token_invalid")
        await _still_open(own)


async def test_a_role_change_makes_live_sockets_reconnect_with_the_new_role(lab: Lab) -> None:
    admin = await lab.login(Role.ADMIN)
    nurse_to_be = await lab.login(Role.DOCTOR)
    async with raw_signal(lab.two.base_url, nurse_to_be.access_token) as signal:
        path = f"/api/v1/users/{nurse_to_be.user_id}"
        await lab.call(admin, "PATCH", path, 200, {"role": "nurse"})
        await _closed_with(signal, "role_changed")
    # The login session lives on: the same token connects again, as a nurse now.
    async with raw(lab.two.base_url, nurse_to_be.access_token) as again:
        await _still_open(again)
    me = await lab.call(nurse_to_be, "GET", "/api/v1/me", 200)
    assert me["role"] == "nurse"
