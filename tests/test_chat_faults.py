"""Chat under faults and across processes, against real server processes.

* Exactly once under SIGKILL: a sender streams numbered messages while the
  server is killed and restarted; afterwards the receiver holds every
  acknowledged message exactly once, in order.
* Two server processes sharing PostgreSQL and Redis deliver to users on either.
* A canary plaintext never reaches PostgreSQL, Redis traffic or the server logs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from teleconsult.core.identity import Role
from tests.chatkit import Person, connect, person, receive, socketio_transport
from tests.dbutil import REDIS_URL
from tests.servers import ServerProcess
from tests.world import Account, make_user

CANARY = "CANARY-2f9d-suicidal-thoughts-since-march"


async def _clinic(dsn: str) -> tuple[Account, Account, Account]:
    """A doctor, a patient and a nurse of one new clinic, straight into the database."""
    from teleconsult.accounts import store

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        clinic = await store.insert_clinic(pool, name="Fault clinic", timezone="UTC")
        doctor = await make_user(pool, clinic.id, Role.DOCTOR)
        patient = await make_user(pool, clinic.id, Role.PATIENT)
        nurse = await make_user(pool, clinic.id, Role.NURSE)
    finally:
        await pool.close()
    return doctor, patient, nurse


@contextlib.asynccontextmanager
async def _servers(*servers: ServerProcess) -> AsyncIterator[None]:
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield
    finally:
        await asyncio.gather(*(s.stop() for s in servers))


async def _close(*who: Person) -> None:
    for p in who:
        await p.close()


async def test_every_acknowledged_message_arrives_exactly_once_in_order_across_sigkills(
    fresh_db: str, tmp_path: Path
) -> None:
    total, kills = 120, 4
    server = ServerProcess(fresh_db, tmp_path)
    doctor_account, patient_account, _ = await _clinic(fresh_db)
    async with _servers(server):
        doctor = await person(server.base_url, doctor_account)
        patient = await person(server.base_url, patient_account)
        try:
            thread = await doctor.rest.create_thread([patient.user_id])
            sender = await connect(doctor, socketio_transport(server.base_url, doctor))
            receiver = await connect(
                patient,
                socketio_transport(server.base_url, patient, transports=("polling",)),
            )
            receiver.follow(thread)
            acked: dict[int, int] = {}  # message number -> seq
            killed = 0
            progress = asyncio.Event()

            async def stream() -> None:
                loop = asyncio.get_running_loop()
                for n in range(total):
                    sent = await sender.send(
                        thread, f"message {n}".encode(), deadline=loop.time() + 90
                    )
                    acked[n] = sent.seq
                    progress.set()

            async def chaos() -> None:
                nonlocal killed
                for k in range(1, kills + 1):
                    while len(acked) < k * total // (kills + 1):
                        progress.clear()
                        await progress.wait()
                    server.kill()
                    killed += 1
                    await asyncio.sleep(0.3)  # clients notice; sends fail and wait
                    await server.start()

            async with asyncio.timeout(240):
                await asyncio.gather(stream(), chaos())
                got = await receive(receiver, total, within=120)
            assert killed == kills and server.starts == kills + 1
            numbers = [int(d.plaintext.decode().split()[1]) for d in got if d.plaintext]
            lost = set(range(total)) - set(numbers)
            duplicated = len(numbers) - len(set(numbers))
            unexpected = [
                d
                for d in got
                if d.plaintext is None or d.seq != acked.get(int(d.plaintext.decode().split()[1]))
            ]
            assert (len(lost), duplicated, len(unexpected)) == (0, 0, 0)
            assert numbers == list(range(total))  # in order
            assert [d.seq for d in got] == list(range(1, total + 1))
            with contextlib.suppress(asyncio.TimeoutError):
                extra = await receiver.next_message(within=1.0)
                pytest.fail(f"an extra delivery after the last one: seq {extra.seq}")
            pool = await asyncpg.connect(fresh_db)
            try:
                stored = await pool.fetchval(
                    "SELECT count(*) FROM messages WHERE thread_id = $1", thread
                )
                # Each stored message has exactly one audit event (chained or still in
                # the intake), and no audit event names a message that was not stored.
                audited = await pool.fetch(
                    """
                    SELECT (detail->>'seq')::bigint AS seq, count(*) AS n FROM (
                        SELECT detail FROM audit_log
                        WHERE action = 'message.send' AND object_id = $1
                        UNION ALL
                        SELECT detail FROM audit_intake
                        WHERE action = 'message.send' AND object_id = $1
                    ) events GROUP BY 1 ORDER BY 1
                    """,
                    str(thread),
                )
            finally:
                await pool.close()
            assert stored == total
            assert [(r["seq"], r["n"]) for r in audited] == [(s, 1) for s in range(1, total + 1)]
        finally:
            await _close(doctor, patient)


async def test_two_server_processes_sharing_postgres_and_redis_deliver_to_users_on_either(
    fresh_db: str, tmp_path: Path
) -> None:
    one = ServerProcess(fresh_db, tmp_path, name="one", REDIS_URL=REDIS_URL)
    two = ServerProcess(fresh_db, tmp_path, name="two", REDIS_URL=REDIS_URL)
    doctor_account, patient_account, nurse_account = await _clinic(fresh_db)
    async with _servers(one, two):
        doctor = await person(one.base_url, doctor_account)
        patient = await person(two.base_url, patient_account)
        nurse = await person(two.base_url, nurse_account)
        try:
            thread = await doctor.rest.create_thread(
                [patient.user_id, nurse.user_id], kind="care_team"
            )
            d = await connect(doctor, socketio_transport(one.base_url, doctor))
            p = await connect(patient, socketio_transport(two.base_url, patient))
            n = await connect(
                nurse,
                socketio_transport(two.base_url, nurse, transports=("polling",), encoding="json"),
                encoding="json",
            )
            for chat in (d, p, n):
                chat.follow(thread)
            await d.send(thread, b"from process one")
            await p.send(thread, b"from process two, websocket")
            await n.send(thread, b"from process two, polling")
            expected = [
                b"from process one",
                b"from process two, websocket",
                b"from process two, polling",
            ]
            for chat in (d, p, n):
                got = await receive(chat, 3)
                assert [m.plaintext for m in got] == expected
                assert [m.seq for m in got] == [1, 2, 3]
        finally:
            await _close(doctor, patient, nurse)


async def _every_text_column_row(dsn: str) -> list[str]:
    """Every row of every table in the public schema, as text."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(table_name) AS t FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        rows: list[str] = []
        for table in tables:
            rows += [r[0] for r in await conn.fetch(f"SELECT x::text FROM {table['t']} x")]
        return rows
    finally:
        await conn.close()


async def test_a_canary_plaintext_appears_nowhere_in_postgres_redis_traffic_or_logs(
    fresh_db: str, tmp_path: Path
) -> None:
    one = ServerProcess(fresh_db, tmp_path, name="one", REDIS_URL=REDIS_URL, LOG_LEVEL="DEBUG")
    two = ServerProcess(fresh_db, tmp_path, name="two", REDIS_URL=REDIS_URL, LOG_LEVEL="DEBUG")
    doctor_account, patient_account, _ = await _clinic(fresh_db)
    traffic: list[str] = []
    redis = aioredis.from_url(REDIS_URL)
    async with _servers(one, two):
        doctor = await person(one.base_url, doctor_account)
        patient = await person(two.base_url, patient_account)
        monitor_ready = asyncio.Event()
        receipt_seen = asyncio.Event()

        async def watch() -> None:
            async with redis.monitor() as monitor:
                monitor_ready.set()
                async for command in monitor.listen():
                    traffic.append(str(command.get("command", "")))
                    if "receipt" in traffic[-1]:
                        receipt_seen.set()

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait_for(monitor_ready.wait(), 10)
            thread = await doctor.rest.create_thread([patient.user_id])
            d = await connect(doctor, socketio_transport(one.base_url, doctor))
            p = await connect(patient, socketio_transport(two.base_url, patient))
            p.follow(thread)
            sent = await d.send(thread, f"{CANARY} and the rest of the note".encode())
            got = await receive(p, 1)
            assert got[0].plaintext is not None and CANARY.encode() in got[0].plaintext
            await p.mark(thread, delivered=sent.seq, read=sent.seq)
            # MONITOR has seen everything up to the receipt's publish, the last one.
            await asyncio.wait_for(receipt_seen.wait(), 10)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await redis.aclose()
            await _close(doctor, patient)
    # The check can fail: the message did cross Redis (its client message id is
    # visible in the PUBLISH), only its text did not.
    seen = "\n".join(traffic)
    assert "PUBLISH" in seen.upper() and sent.client_msg_id in seen
    assert CANARY not in seen
    rows = await _every_text_column_row(fresh_db)
    assert any(sent.client_msg_id in row for row in rows)
    assert not [row for row in rows if CANARY in row]
    logs = one.log_text() + two.log_text()
    assert logs and CANARY not in logs


async def test_a_server_with_an_abandoned_long_poll_session_still_stops_cleanly(
    fresh_db: str, tmp_path: Path
) -> None:
    """A polling client that vanished after its handshake (a phone that lost
    signal) must not hold the shutdown: engine.io's own disconnect-all waited
    for that session's queue to be read, forever."""
    server = ServerProcess(fresh_db, tmp_path)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.base_url}/socket.io/?EIO=4&transport=polling") as resp:
                assert resp.status == 200 and '"sid"' in await resp.text()
    finally:
        code = await server.stop()
    assert code == 0, f"the server had to be killed (exit {code}):\n{server.log_tail()}"
