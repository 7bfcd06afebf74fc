"""Acked messages are not stranded by a Redis outage (issue 16).

Two real server processes share PostgreSQL and a private Redis that the test kills
and starts again. While Redis is down, sends are acked and stored, but frames for
the other process cannot travel; when a process's bus is subscribed again it tells
its /chat connections to ``sync``, and they resume by seq, with nobody sending
anything else in the thread.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from teleconsult.core.identity import Role
from tests.chatkit import connect, next_event, person, receive, socketio_transport
from tests.faultkit import private_redis
from tests.servers import ServerProcess
from tests.world import clinic_people

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


async def test_messages_acked_during_a_redis_outage_reach_an_online_receiver_after_it(
    fresh_db: str, tmp_path: Path
) -> None:
    doctor_account, patient_account = await clinic_people(fresh_db, Role.DOCTOR, Role.PATIENT)
    async with private_redis(tmp_path) as redis:
        one = ServerProcess(fresh_db, tmp_path, name="one", REDIS_URL=redis.url)
        two = ServerProcess(fresh_db, tmp_path, name="two", REDIS_URL=redis.url)
        await asyncio.gather(one.start(), two.start())
        doctor = await person(one.base_url, doctor_account)
        patient = await person(two.base_url, patient_account)
        try:
            thread = await doctor.rest.create_thread([patient.user_id])
            sender = await connect(doctor, socketio_transport(one.base_url, doctor))
            receiver = await connect(patient, socketio_transport(two.base_url, patient))
            sender.follow(thread)
            receiver.follow(thread)
            await sender.send(thread, b"before the outage")
            assert [m.seq for m in await receive(receiver, 1)] == [1]

            redis.kill()
            for i in range(10):
                sent = await sender.send(thread, f"during the outage {i}".encode())
                assert sent.seq == i + 2
            await asyncio.sleep(5)
            await redis.start()
            back = time.monotonic()
            # Nobody sends again: the receiver is told to resume and catches up by itself.
            await next_event(receiver, "sync", within=30)
            got = await receive(receiver, 10, within=30)
            caught_up = time.monotonic() - back
            assert [m.seq for m in got] == list(range(2, 12))
            assert [m.plaintext for m in got] == [
                f"during the outage {i}".encode() for i in range(10)
            ]
            print(f"caught up {caught_up:.2f} s after Redis returned")
            # One warning when Redis went, one line when it came back, per process.
            for server in (one, two):
                await server.log_shows("redis is back")
                log = server.log_text()
                assert log.count("redis is down") == 1, server.log_tail()
                assert log.count("redis is back") == 1, server.log_tail()
                assert "Traceback" not in log, server.log_tail()
        finally:
            await doctor.close()
            await patient.close()
            await asyncio.gather(one.stop(), two.stop())
