"""Signaling (/signal): who may join, the waiting room, relay, grace and rejoin."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.accounts import store as accounts_store
from teleconsult.client.rest import RestClient
from teleconsult.client.signal import SignalClient, SignalError
from teleconsult.core.identity import Role
from teleconsult.server.app import POOL
from teleconsult.signaling.namespace import SIGNALING
from teleconsult.turn.routes import TURN
from tests.conftest import StartServer
from tests.dbutil import REDIS_URL
from tests.servers import ServerProcess
from tests.signalkit import open_room
from tests.world import PASSWORD, Account, Tenant, make_tenant, make_user


def _url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


@contextlib.asynccontextmanager
async def _signal(
    client: TestClient[Any, Any], *accounts: Account
) -> AsyncIterator[list[SignalClient]]:
    clients = [SignalClient(_url(client), a.access_token) for a in accounts]
    try:
        for c in clients:
            await c.connect()
        yield clients
    finally:
        for c in clients:
            await c.close()


async def _events(pool: asyncpg.Pool, room_id: str) -> list[tuple[str, str | None]]:
    rows = await pool.fetch(
        "SELECT e.kind, e.role FROM consultation_events e "
        "JOIN consultations c ON c.id = e.consultation_id WHERE c.room_id = $1 ORDER BY e.id",
        room_id,
    )
    return [(r["kind"], r["role"]) for r in rows]


async def test_the_patient_waits_the_doctor_admits_and_offers_reach_only_the_named_peer(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    room = await open_room(app_pool, tenant)
    async with _signal(client, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        waiting = await patient.join(room)
        assert waiting["status"] == "waiting" and waiting["peers"] == []
        answer = await doctor.join(room)
        assert answer["status"] == "admitted"
        # The doctor sees who waits (the patient joined first).
        assert [(p["peer_id"], p["status"]) for p in answer["peers"]] == [
            (patient.peer_id, "waiting")
        ]
        # A waiting patient cannot signal yet.
        with pytest.raises(SignalError) as refused:
            await patient.call("signal", {"to": doctor.peer_id, "kind": "offer", "sdp": "v=0"})
        assert refused.value.code == "not_admitted"
        await doctor.call("admit", {"peer_id": patient.peer_id})
        admitted = await patient.next_event("admitted")
        assert [p["peer_id"] for p in admitted["peers"]] == [doctor.peer_id]
        polite_patient = admitted["peers"][0]["polite"]
        joined = await doctor.next_event("peer_joined")
        assert joined["peer_id"] == patient.peer_id and joined["polite"] is not polite_patient
        await patient.call("signal", {"to": doctor.peer_id, "kind": "offer", "sdp": "v=0 offer"})
        offer = await doctor.next_event("signal")
        assert offer == {
            "from": patient.peer_id,
            "kind": "offer",
            "sdp": "v=0 offer",
            "restart": False,
        }
        await doctor.call(
            "signal",
            {
                "to": patient.peer_id,
                "kind": "candidate",
                "candidate": {
                    "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                    "sdpMid": "0",
                },
            },
        )
        candidate = await patient.next_event("signal")
        assert candidate["kind"] == "candidate" and candidate["from"] == doctor.peer_id
    kinds = await _events(app_pool, room)
    assert ("waiting", "patient") in kinds and ("admitted", "patient") in kinds
    assert ("started", None) in kinds


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"to": "x" * 12, "kind": "offer"}, "sdp"),
        ({"to": "x" * 12, "kind": "bogus", "sdp": "v=0"}, "kind"),
        ({"to": "short", "kind": "offer", "sdp": "v=0"}, "to"),
        ({"to": "x" * 12, "kind": "candidate", "candidate": {"candidate": 5}}, "candidate"),
        ("not an object", "data"),
    ],
)
async def test_malformed_signals_are_refused_with_the_field_named(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, data: Any, field: str
) -> None:
    room = await open_room(app_pool, tenant)
    async with _signal(client, tenant[Role.DOCTOR]) as (doctor,):
        await doctor.join(room)
        with pytest.raises(SignalError) as refused:
            await doctor.call("signal", data)
        assert refused.value.code == "validation_failed"
        assert any(
            field in f["field"] or field in f["message"] for f in refused.value.error["fields"]
        )


async def test_an_oversized_sdp_is_refused(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    room = await open_room(app_pool, tenant)
    async with _signal(client, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        await doctor.join(room)
        await patient.join(room)
        await doctor.call("admit", {"peer_id": patient.peer_id})
        with pytest.raises(SignalError) as refused:
            await doctor.call(
                "signal", {"to": patient.peer_id, "kind": "offer", "sdp": "a" * 100_000}
            )
        assert refused.value.code == "payload_too_large"


async def test_outsiders_other_patients_and_joins_outside_the_window_are_refused(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    room = await open_room(app_pool, tenant)
    assert tenant.other_patient is not None
    later = await open_room(app_pool, tenant, opens_in=timedelta(hours=2), offset_days=1)
    async with _signal(
        client,
        other_tenant[Role.DOCTOR],
        tenant.other_patient,
        tenant[Role.NURSE],
        tenant[Role.DOCTOR],
    ) as (outsider, other_patient, nurse, doctor):
        for who in (outsider, other_patient, nurse):
            with pytest.raises(SignalError) as refused:
                await who.join(room)
            assert refused.value.code == "not_found"
        with pytest.raises(SignalError) as early:
            await doctor.join(later)
        assert early.value.code == "outside_join_window"
        with pytest.raises(SignalError) as unknown:
            await doctor.join("no-such-room-0000000000")
        assert unknown.value.code == "not_found"


async def test_an_invited_nurse_waits_and_a_full_room_needs_the_sfu(
    client: TestClient[Any, Any],
    app_pool: asyncpg.Pool,
    tenant: Tenant,
    aiohttp_client: Any,
    settings: Any,
) -> None:
    room = await open_room(app_pool, tenant)
    async with _signal(client, tenant[Role.DOCTOR], tenant[Role.NURSE], tenant[Role.PATIENT]) as (
        doctor,
        nurse,
        patient,
    ):
        await doctor.join(room)
        await doctor.call("invite", {"user_id": str(tenant[Role.NURSE].user_id)})
        answer = await nurse.join(room)
        assert answer["status"] == "waiting" and answer["role"] == "guest"
        seen = await doctor.next_event("waiting")
        assert seen["peer_id"] == nurse.peer_id and seen["role"] == "guest"
        await doctor.call("decline", {"peer_id": nurse.peer_id})
        assert await nurse.next_event("declined") == {"by": doctor.peer_id}
        # The patient may not use the doctor's controls.
        await patient.join(room)
        with pytest.raises(SignalError) as refused:
            await patient.call("admit", {"peer_id": patient.peer_id})
        assert refused.value.code == "forbidden"


async def test_a_dropped_peer_keeps_its_place_and_rejoins_with_the_same_id(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    room = await open_room(app_pool, tenant)
    async with _signal(client, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        await doctor.join(room)
        await patient.join(room)
        await doctor.call("admit", {"peer_id": patient.peer_id})
        await doctor.next_event("peer_joined")
        old_id = patient.peer_id
        assert old_id is not None
        await patient.cut()
        assert await doctor.next_event("peer_disconnected") == {"peer_id": old_id}
        again = SignalClient(_url(client), tenant[Role.PATIENT].access_token)
        try:
            await again.connect()
            answer = await again.join(room, peer_id=old_id)
            assert answer["peer_id"] == old_id and answer["status"] == "admitted"
            assert await doctor.next_event("peer_reconnected") == {"peer_id": old_id}
            await again.call(
                "signal", {"to": doctor.peer_id, "kind": "offer", "sdp": "v=0", "restart": True}
            )
            restart = await doctor.next_event("signal")
            assert restart["restart"] is True
        finally:
            await again.close()


async def test_the_doctor_is_never_locked_out_of_their_own_room(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    room = await open_room(app_pool, tenant)
    async with _signal(client, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        await doctor.join(room)
        await patient.join(room)
        await doctor.call("admit", {"peer_id": patient.peer_id})
        await doctor.cut()
        # Back on a new device without the old peer id: admitted at once, the old peer replaced.
        again = SignalClient(_url(client), tenant[Role.DOCTOR].access_token)
        try:
            await again.connect()
            answer = await again.join(room)
            assert answer["status"] == "admitted" and answer["peer_id"] != doctor.peer_id
            assert [p["peer_id"] for p in answer["peers"]] == [patient.peer_id]
        finally:
            await again.close()


async def test_peers_on_two_server_processes_reach_each_other(
    fresh_db: str, tmp_path: Path
) -> None:
    one = ServerProcess(fresh_db, tmp_path, name="one", REDIS_URL=REDIS_URL)
    two = ServerProcess(fresh_db, tmp_path, name="two", REDIS_URL=REDIS_URL)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    try:
        clinic = await accounts_store.insert_clinic(pool, name="Two processes", timezone="UTC")
        tenant = Tenant(clinic_id=clinic.id)
        for role in (Role.DOCTOR, Role.PATIENT):
            tenant.users[role] = await make_user(pool, clinic.id, role)
        room = await open_room(pool, tenant)
    finally:
        await pool.close()
    await asyncio.gather(one.start(), two.start())
    try:
        doctor_rest, patient_rest = RestClient(one.base_url), RestClient(two.base_url)
        await doctor_rest.login(tenant[Role.DOCTOR].email, PASSWORD)
        await patient_rest.login(tenant[Role.PATIENT].email, PASSWORD)
        doctor = SignalClient(one.base_url, doctor_rest.access_token)
        patient = SignalClient(two.base_url, patient_rest.access_token, transports=("polling",))
        try:
            await doctor.connect()
            await patient.connect()
            await doctor.join(room)
            await patient.join(room)
            waiting = await doctor.next_event("waiting")
            assert waiting["peer_id"] == patient.peer_id
            await doctor.call("admit", {"peer_id": patient.peer_id})
            await patient.next_event("admitted")
            await patient.call("signal", {"to": doctor.peer_id, "kind": "offer", "sdp": "v=0"})
            assert (await doctor.next_event("signal"))["from"] == patient.peer_id
            await doctor.call("signal", {"to": patient.peer_id, "kind": "answer", "sdp": "v=0"})
            assert (await patient.next_event("signal"))["kind"] == "answer"
        finally:
            await doctor.close()
            await patient.close()
            await doctor_rest.close()
            await patient_rest.close()
    finally:
        await asyncio.gather(one.stop(), two.stop())


async def test_the_doctor_sees_who_waits_with_their_network_test(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    room = await open_room(app_pool, tenant)
    row = await app_pool.fetchrow(
        "SELECT c.id, c.appointment_id FROM consultations c WHERE c.room_id = $1", room
    )
    patient_id = tenant[Role.PATIENT].user_id
    # A finished pre-call test of the patient (what rtc/ stores after a real one).
    await app_pool.execute(
        """
        INSERT INTO network_tests (id, clinic_id, appointment_id, consultation_id, user_id,
            user_role, expires_at, finished_at, status, server)
        VALUES (gen_random_uuid(), $1, $2, $3, $4, 'patient', now() + interval '30 s',
            now(), 'completed', '{"rtt_ms": 41.5, "loss": 0.0}')
        """,
        tenant.clinic_id,
        row["appointment_id"],
        row["id"],
        patient_id,
    )
    async with _signal(client, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        await doctor.join(room)
        await patient.join(room)
        waiting = await doctor.next_event("waiting")
        assert waiting["user_id"] == str(patient_id)
        assert waiting["network_test"]["status"] == "completed"
        assert waiting["network_test"]["server"] == {"rtt_ms": 41.5, "loss": 0.0}


async def test_fresh_turn_credentials_are_pushed_before_the_old_ones_expire(
    start_server: StartServer,
) -> None:
    # The sweep that pushes them runs every heartbeat.
    client = await start_server(SIGNAL_HEARTBEAT_SECONDS="1")
    app_pool: asyncpg.Pool = client.app[POOL]
    tenant = await make_tenant(app_pool, client)
    room = await open_room(app_pool, tenant)
    service = client.app[SIGNALING]
    turn = client.app[TURN]
    issued: list[str] = []

    def soon(user_id: UUID) -> tuple[list[dict[str, Any]], float | None]:
        # The real credentials, but due for refresh a second from now (the
        # shortest TURN_TTL allowed is a minute).
        credentials = turn.for_user(user_id)
        issued.append(credentials.username)
        return credentials.ice_servers(), time.time() + 1.0

    service._ice = soon
    async with _signal(client, tenant[Role.DOCTOR]) as (doctor,):
        answer = await doctor.join(room)
        first = answer["ice_servers"][0]["username"]
        pushed = await doctor.next_event("ice_servers", within=10)
        assert pushed["ice_servers"][0]["username"] in issued[1:]
        assert pushed["ice_refresh_at"] > answer["ice_refresh_at"]
        assert first == issued[0]


async def test_simultaneous_joins_never_lose_the_waiting_news_with_redis(
    start_server: StartServer,
) -> None:
    server = await start_server(REDIS_URL=REDIS_URL)
    pool: asyncpg.Pool = server.app[POOL]
    tenant = await make_tenant(pool, server, name="Race")
    rooms = [await open_room(pool, tenant, offset_days=i) for i in range(8)]
    doctors = [SignalClient(_url(server), tenant[Role.DOCTOR].access_token) for _ in rooms]
    patients = [SignalClient(_url(server), tenant[Role.PATIENT].access_token) for _ in rooms]
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.connect() for c in doctors + patients))
            joins = [
                (c, room)
                for room, d, p in zip(rooms, doctors, patients, strict=True)
                for c in (d, p)
            ]
            answers = await asyncio.gather(*(c.join(room) for c, room in joins))
            for doctor, patient, answer in zip(doctors, patients, answers[0::2], strict=True):
                # The doctor learns of the patient: in its join answer, or by the event.
                if patient.peer_id not in [p["peer_id"] for p in answer["peers"]]:
                    waiting = await doctor.next_event("waiting", within=10)
                    assert waiting["peer_id"] == patient.peer_id
                await doctor.call("admit", {"peer_id": patient.peer_id})
                await patient.next_event("admitted", within=10)
    finally:
        for c in doctors + patients:
            await c.close()
