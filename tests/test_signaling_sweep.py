"""The one sweep of /signal: grace that ends, processes that die, no task per socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.client.signal import SignalClient, SignalError
from teleconsult.core.identity import Role
from teleconsult.server.app import POOL
from teleconsult.signaling.rooms import Peer, RedisRooms, new_link, new_peer_id
from tests.conftest import StartServer
from tests.dbutil import REDIS_URL
from tests.signalkit import open_room
from tests.world import Tenant, make_tenant


def _url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def _kinds(pool: asyncpg.Pool, room_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT e.kind FROM consultation_events e "
        "JOIN consultations c ON c.id = e.consultation_id WHERE c.room_id = $1 ORDER BY e.id",
        room_id,
    )
    return [r["kind"] for r in rows]


def _our_tasks() -> list[asyncio.Task[Any]]:
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "/teleconsult/" in code.co_filename:
            found.append(task)
    return found


async def test_a_dropped_peer_leaves_for_good_when_its_grace_ends(
    start_server: StartServer,
) -> None:
    server = await start_server(SIGNAL_GRACE_SECONDS="1", SIGNAL_HEARTBEAT_SECONDS="1")
    pool = server.app[POOL]
    tenant = await make_tenant(pool, server)
    room = await open_room(pool, tenant)
    base = _url(server)
    doctor = SignalClient(base, tenant[Role.DOCTOR].access_token)
    patient = SignalClient(base, tenant[Role.PATIENT].access_token)
    again = SignalClient(base, tenant[Role.PATIENT].access_token)
    try:
        async with asyncio.timeout(30):
            for c in (doctor, patient, again):
                await c.connect()
            await doctor.join(room)
            await patient.join(room)
            await doctor.call("admit", {"peer_id": patient.peer_id})
            old_id = patient.peer_id
            await patient.cut()
            assert await doctor.next_event("peer_disconnected") == {"peer_id": old_id}
            assert await doctor.next_event("peer_left") == {"peer_id": old_id}
            # Too late to come back as the same peer: a new one, waiting again.
            answer = await again.join(room, peer_id=old_id)
            assert answer["peer_id"] != old_id and answer["status"] == "waiting"
            kinds = await _kinds(pool, room)
            assert kinds[-3:] == ["disconnected", "left", "waiting"], kinds
    finally:
        for c in (doctor, patient, again):
            await c.close()


async def test_the_peers_of_a_process_that_died_are_dropped_by_another(
    start_server: StartServer,
) -> None:
    server = await start_server(REDIS_URL=REDIS_URL, SIGNAL_HEARTBEAT_SECONDS="1")
    pool = server.app[POOL]
    tenant = await make_tenant(pool, server)
    room = await open_room(pool, tenant)
    doctor = SignalClient(_url(server), tenant[Role.DOCTOR].access_token)
    # What a process left behind when it was killed: an admitted patient it held,
    # last vouched for long ago.
    dead = RedisRooms(REDIS_URL, silence=3)
    long_ago = time.time() - 60
    ghost = Peer(
        peer_id=new_peer_id(),
        user_id=tenant[Role.PATIENT].user_id,
        role="patient",
        status="admitted",
        connected=True,
        joined_at=long_ago,
        seen=long_ago,
        link=new_link(),
    )
    try:
        async with asyncio.timeout(30):
            await doctor.connect()
            await doctor.join(room)
            await dead.enter(room, ghost, rejoin=None, max_peers=4)
            assert await doctor.next_event("peer_left") == {"peer_id": ghost.peer_id}
            assert ghost.peer_id not in await dead.peers(room)
            assert (await _kinds(pool, room))[-1] == "left"
    finally:
        await doctor.close()
        await dead.close()


async def test_sockets_in_rooms_own_no_task_while_idle(start_server: StartServer) -> None:
    server = await start_server(SIGNAL_HEARTBEAT_SECONDS="1")
    pool = server.app[POOL]
    tenant = await make_tenant(pool, server)
    rooms = [await open_room(pool, tenant, offset_days=i) for i in range(3)]
    base = _url(server)
    people = [
        SignalClient(base, tenant[r].access_token)
        for _ in rooms
        for r in (Role.DOCTOR, Role.PATIENT)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for c in people:
            stack.push_async_callback(c.close)
        async with asyncio.timeout(30):
            for c in people:
                await c.connect()
            await asyncio.sleep(0.2)
            before = len(_our_tasks())
            for i, room in enumerate(rooms):
                doctor, patient = people[2 * i], people[2 * i + 1]
                await doctor.join(room)
                await patient.join(room)
                await doctor.call("admit", {"peer_id": patient.peer_id})
            await asyncio.sleep(1.5)  # a sweep or so later
            assert len(_our_tasks()) == before, [t.get_name() for t in _our_tasks()]


async def test_a_declined_socket_may_knock_again(client: TestClient[Any, Any]) -> None:
    pool = client.app[POOL]
    tenant = await make_tenant(pool, client)
    room = await open_room(pool, tenant)
    base = _url(client)
    doctor = SignalClient(base, tenant[Role.DOCTOR].access_token)
    patient = SignalClient(base, tenant[Role.PATIENT].access_token)
    try:
        async with asyncio.timeout(30):
            await doctor.connect()
            await patient.connect()
            await doctor.join(room)
            first = await patient.join(room)
            await doctor.call("decline", {"peer_id": first["peer_id"]})
            assert await patient.next_event("declined") == {"by": doctor.peer_id}
            second = await patient.join(room)
            assert second["status"] == "waiting" and second["peer_id"] != first["peer_id"]
            waiting = await doctor.next_event("waiting")
            while waiting["peer_id"] != second["peer_id"]:
                waiting = await doctor.next_event("waiting")
    finally:
        await doctor.close()
        await patient.close()


async def test_only_users_of_the_clinic_can_be_invited(
    client: TestClient[Any, Any], other_tenant: Tenant
) -> None:
    pool = client.app[POOL]
    tenant = await make_tenant(pool, client)
    room = await open_room(pool, tenant)
    doctor = SignalClient(_url(client), tenant[Role.DOCTOR].access_token)
    try:
        await doctor.connect()
        await doctor.join(room)
        for stranger in (uuid4(), other_tenant[Role.NURSE].user_id):
            with pytest.raises(SignalError) as refused:
                await doctor.call("invite", {"user_id": str(stranger)})
            assert refused.value.code == "not_found"
        await doctor.call("invite", {"user_id": str(tenant[Role.NURSE].user_id)})
    finally:
        await doctor.close()
    assert (await _kinds(pool, room))[-1] == "invited"
