"""No 500 on crafted input: each of these answered 500 (or hung a /chat connect) before.

- ``Authorization: Bearer \\xff\\xfe``: raw bytes aiohttp decodes as surrogates, which
  PyJWT could not encode (UnicodeEncodeError); the same token as a lone surrogate in
  the /chat connect auth left the client without an answer;
- a forged pagination cursor whose timestamp asyncpg cannot send (year 1 at +05:00,
  year 9999 at -05:00) on /users, /patients and /appointments;
- ``reschedule`` with ``"version": 2147483648``, past PostgreSQL's int4.

Each gets a 4xx problem document with a stable code, from a real server process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from teleconsult.accounts import store
from teleconsult.core.identity import Role
from tests.servers import ServerProcess
from tests.world import PASSWORD, make_user

pytestmark = pytest.mark.slow

BAD_BEARER = b"Bearer \xff\xfe"


@dataclass(frozen=True)
class Member:
    user_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.asynccontextmanager
async def running(dsn: str, root: Path, **env: str) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(dsn, root, **env)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


async def members(dsn: str, base: str, roles: list[Role]) -> tuple[str, dict[Role, Member]]:
    """A clinic of its own with one signed-in user per role."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        clinic = await store.insert_clinic(pool, name="Crafted clinic", timezone="UTC")
        accounts = {role: await make_user(pool, clinic.id, role) for role in roles}
    finally:
        await pool.close()
    found: dict[Role, Member] = {}
    async with aiohttp.ClientSession() as http:
        for role, account in accounts.items():
            async with http.post(
                f"{base}/api/v1/auth/login",
                json={"email": account.email, "password": PASSWORD},
            ) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            found[role] = Member(str(account.user_id), body["access_token"])
    return str(clinic.id), found


async def raw_request(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request written byte for byte (no client would send these)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def assert_problem(status: int, headers: dict[str, str], body: bytes, want: int, code: str) -> None:
    assert status == want, body
    assert headers["content-type"].startswith("application/problem+json"), headers
    assert json.loads(body)["code"] == code, body


def forged_cursor(timestamp: str) -> str:
    raw = json.dumps([timestamp, str(uuid4())]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _at(days: int, hour: int) -> str:
    day = datetime.now(UTC).date() + timedelta(days=days)
    return datetime.combine(day, time(hour), tzinfo=UTC).isoformat()


async def test_a_bearer_token_of_raw_bytes_is_401_not_500(fresh_db: str, tmp_path: Path) -> None:
    async with running(fresh_db, tmp_path) as server:
        status, headers, body = await raw_request(
            server.port,
            b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + BAD_BEARER
            + b"\r\nConnection: close\r\n\r\n",
        )
        assert_problem(status, headers, body, 401, "token_invalid")
        # engine.io's handshake ignores the header: still an ordinary answer.
        status, _, body = await raw_request(
            server.port,
            b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: " + BAD_BEARER + b"\r\nConnection: close\r\n\r\n",
        )
        assert status == 200, body
    assert "Traceback" not in server.log_text()


async def test_a_chat_connect_with_an_unencodable_token_is_refused(
    fresh_db: str, tmp_path: Path
) -> None:
    async with (
        running(fresh_db, tmp_path) as server,
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.base_url}/socket.io/?EIO=4&transport=websocket") as ws,
    ):
        opening = await ws.receive_str(timeout=10)
        assert opening.startswith("0{"), opening
        # The JSON escape of a lone surrogate: what "\xff" becomes on some clients.
        await ws.send_str('40/chat,{"token": "\\udcff\\udcfe"}')
        refusal = await ws.receive_str(timeout=10)
    assert refusal.startswith("44/chat,"), refusal
    assert json.loads(refusal.removeprefix("44/chat,"))["data"]["code"] == "token_invalid"
    assert "Traceback" not in server.log_text()


@pytest.mark.parametrize(
    "timestamp",
    ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+00:00"],
)
async def test_a_forged_cursor_is_400_invalid_cursor_on_every_list(
    fresh_db: str, tmp_path: Path, timestamp: str
) -> None:
    async with running(fresh_db, tmp_path) as server:
        _, people = await members(fresh_db, server.base_url, [Role.ADMIN])
        admin = people[Role.ADMIN]
        window = {"from": _at(0, 0), "to": _at(7, 0)}
        async with aiohttp.ClientSession(server.base_url) as http:
            for path, extra in [
                ("/api/v1/users", {}),
                ("/api/v1/patients", {}),
                ("/api/v1/appointments", window),
            ]:
                params = {"cursor": forged_cursor(timestamp), **extra}
                async with http.get(path, params=params, headers=admin.headers) as resp:
                    body: dict[str, Any] = await resp.json(content_type=None)
                    assert resp.status == 400, (path, body)
                    assert resp.content_type == "application/problem+json"
                    assert body["code"] == "invalid_cursor", (path, body)
                    assert body["errors"] == [
                        {"field": "query.cursor", "message": "invalid cursor"}
                    ]


async def _book(http: aiohttp.ClientSession, admin: Member, doctor: Member, patient: Member) -> str:
    """An appointment of ``patient`` with ``doctor``, who works around the clock."""
    calendar = f"/api/v1/doctors/{doctor.user_id}"
    async with http.put(
        f"{calendar}/profile",
        json={"consultation_minutes": 30, "services": ["video"]},
        headers=admin.headers,
    ) as resp:
        assert resp.status == 200, await resp.text()
    for weekday in range(7):
        async with http.post(
            f"{calendar}/availability/rules",
            json={"weekday": weekday, "start_time": "00:00", "end_time": "23:59"},
            headers=admin.headers,
        ) as resp:
            assert resp.status == 201, await resp.text()
    async with http.post(
        "/api/v1/appointments",
        json={
            "doctor_id": doctor.user_id,
            "patient_id": patient.user_id,
            "service": "video",
            "starts_at": _at(2, 10),
        },
        headers=admin.headers,
    ) as resp:
        assert resp.status == 201, await resp.text()
        booked: dict[str, Any] = await resp.json()
    return str(booked["id"])


async def test_a_reschedule_version_past_int4_is_400_not_500(fresh_db: str, tmp_path: Path) -> None:
    async with running(fresh_db, tmp_path) as server:
        _, people = await members(
            fresh_db, server.base_url, [Role.ADMIN, Role.DOCTOR, Role.PATIENT]
        )
        admin = people[Role.ADMIN]
        async with aiohttp.ClientSession(server.base_url) as http:
            appointment = await _book(http, admin, people[Role.DOCTOR], people[Role.PATIENT])
            move = f"/api/v1/appointments/{appointment}/reschedule"
            for version in (2**31, 2**63, -1, 0):
                async with http.post(
                    move, json={"starts_at": _at(3, 10), "version": version}, headers=admin.headers
                ) as resp:
                    body = await resp.json(content_type=None)
                    assert resp.status == 400, body
                    assert body["code"] == "validation_failed", body
                    assert [e["field"] for e in body["errors"]] == ["body.version"], body
            # The largest int4 is a version like any other: stale, not a failure.
            async with http.post(
                move, json={"starts_at": _at(3, 10), "version": 2**31 - 1}, headers=admin.headers
            ) as resp:
                body = await resp.json(content_type=None)
                assert resp.status == 409, body
                assert body["code"] == "stale_version", body
