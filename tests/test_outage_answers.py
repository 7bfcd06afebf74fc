"""Outages get a clear answer (issue 16): with PostgreSQL down, REST, login, a /chat
connect and a `send` ack all say `unavailable` (503, with Retry-After), never
`internal_error`, and the same requests work again once it is back.

A private PostgreSQL cluster of the test's own is crashed (`pg_ctl -m immediate`)
under a real server process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from teleconsult.core.identity import Role
from teleconsult.messaging.envelope import to_msgpack
from tests.chatkit import connect, person, socketio_transport
from tests.faultkit import postgres_bin, private_postgres, private_redis
from tests.rawsio import refusal
from tests.servers import ServerProcess
from tests.world import PASSWORD, clinic_people

BINDIR = postgres_bin()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BINDIR is None, reason="needs PostgreSQL's server binaries"),
]


def _unavailable(error: Any) -> None:
    assert error["code"] == "unavailable", error
    assert error["status"] == 503
    assert error["retry_after"] > 0


async def test_with_postgres_down_every_surface_answers_unavailable_then_recovers(
    tmp_path: Path,
) -> None:
    assert BINDIR is not None
    async with private_postgres(BINDIR) as pg:
        server = ServerProcess(pg.url, tmp_path)
        await server.start()
        doctor_account, patient_account = await clinic_people(pg.url, Role.DOCTOR, Role.PATIENT)
        doctor = await person(server.base_url, doctor_account)
        patient = await person(server.base_url, patient_account)
        try:
            thread = await doctor.rest.create_thread([patient.user_id])
            link = socketio_transport(server.base_url, doctor)
            chat = await connect(doctor, link)
            await chat.send(thread, b"before")
            env = await chat.seal(thread, b"during")
            send = {"thread_id": str(thread), "envelope": to_msgpack(env)}

            await pg.crash()
            ack = await link.call("send", send, within=20)
            assert ack["ok"] is False
            _unavailable(ack["error"])
            got = await refusal(server.base_url, {"token": doctor.rest.access_token})
            _unavailable(got["data"])
            async with aiohttp.ClientSession() as http:
                async with http.get(
                    f"{server.base_url}/api/v1/me",
                    headers={"Authorization": f"Bearer {doctor.rest.access_token}"},
                ) as resp:
                    assert resp.status == 503, await resp.text()
                    assert int(resp.headers["Retry-After"]) > 0
                    assert (await resp.json(content_type=None))["code"] == "unavailable"
                async with http.post(
                    f"{server.base_url}/api/v1/auth/login",
                    json={"email": doctor_account.email, "password": PASSWORD},
                ) as resp:
                    assert resp.status == 503, await resp.text()
                    assert (await resp.json(content_type=None))["code"] == "unavailable"

            await pg.start()
            # The same envelope, sent again, is stored once; the server is whole again.
            async with asyncio.timeout(30):
                sent = await chat.send_envelope(env)
            assert sent.seq == 2
            # The log says it once each way, with a count in between, and no traceback.
            await server.log_shows("database is back")
        finally:
            await doctor.close()
            await patient.close()
            await server.stop()
    log = server.log_text()
    # Answered, not crashed: no request logged an error.
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert not errors, errors
    assert "Traceback" not in log, server.log_tail()
    assert log.count("database is down") == 1, server.log_tail()
    assert log.count("database is back") == 1, server.log_tail()


async def test_with_redis_down_login_answers_unavailable_then_works_again(
    fresh_db: str, tmp_path: Path
) -> None:
    (account,) = await clinic_people(fresh_db, Role.DOCTOR)
    login = {"email": account.email, "password": PASSWORD}
    async with private_redis(tmp_path) as redis:
        server = ServerProcess(fresh_db, tmp_path, REDIS_URL=redis.url)
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                url = f"{server.base_url}/api/v1/auth/login"
                redis.kill()
                async with http.post(url, json=login) as resp:
                    assert resp.status == 503, await resp.text()
                    assert int(resp.headers["Retry-After"]) > 0
                    assert (await resp.json(content_type=None))["code"] == "unavailable"
                await redis.start()
                async with asyncio.timeout(30):
                    while True:
                        async with http.post(url, json=login) as resp:
                            if resp.status == 200:
                                break
                            assert resp.status == 503, await resp.text()
                        await asyncio.sleep(0.5)
            await server.log_shows("redis is back")
        finally:
            await server.stop()
    log = server.log_text()
    assert "Traceback" not in log, server.log_tail()
    assert log.count("redis is down") == 1, server.log_tail()
