"""Joins that arrive together share statements: the batched reads and writes give each
join exactly what its own statement gave (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from teleconsult.core.batching import Batcher
from teleconsult.core.identity import Role
from teleconsult.signaling import store
from teleconsult.signaling.store import NewEvent
from tests.signalkit import open_room
from tests.world import Tenant


async def _kinds(pool: asyncpg.Pool, room_id: str) -> list[str]:
    return [e.kind for e in await store.events(pool, room_id)]


async def test_many_rooms_events_in_one_statement_keep_each_rooms_order(
    client: TestClient[Any, Any], tenant: Tenant, app_pool: asyncpg.Pool
) -> None:
    one = await open_room(app_pool, tenant, offset_days=1)
    two = await open_room(app_pool, tenant, offset_days=2)
    doctor = tenant[Role.DOCTOR].user_id
    async with app_pool.acquire() as conn:
        await store.record_many(
            conn,
            [
                (two, [NewEvent("waiting", doctor, "doctor", "peer-two-22")], False),
                (one, [NewEvent("joined", doctor, "doctor", "peer-one-11")], False),
                (
                    "no-such-room-xxxxxxxx",
                    [NewEvent("joined", doctor, "doctor", "peer-nine-9")],
                    True,
                ),
                (one, [NewEvent("admitted", doctor, "patient", "peer-three-3")], True),
                (
                    two,
                    [NewEvent("left", doctor, "doctor", "peer-two-22"), NewEvent("ended")],
                    False,
                ),
            ],
        )
    assert await _kinds(app_pool, one) == ["joined", "admitted", "started"]
    assert await _kinds(app_pool, two) == ["waiting", "left", "ended"]
    status = "SELECT status FROM consultations WHERE room_id = $1"
    assert await app_pool.fetchval(status, one) == "open"
    assert await app_pool.fetchval(status, two) == "scheduled"


async def test_many_accesses_in_one_statement_answer_each_ask(
    client: TestClient[Any, Any], tenant: Tenant, app_pool: asyncpg.Pool
) -> None:
    room = await open_room(app_pool, tenant, offset_days=3)
    doctor, patient = tenant[Role.DOCTOR].user_id, tenant[Role.PATIENT].user_id
    nurse = tenant[Role.NURSE].user_id
    async with app_pool.acquire() as conn:
        found = await store.room_access_many(
            conn, [(room, patient), ("no-such-room-xxxxxxxx", patient), (room, nurse)]
        )
        alone = await store.room_access(conn, room, patient)
    first, missing, stranger = found
    assert first == alone and first is not None
    assert (first.doctor_id, first.patient_id, first.invited) == (doctor, patient, False)
    assert missing is None
    assert stranger is not None and stranger.invited is False


async def test_a_batcher_hands_each_caller_its_own_result_in_arrival_order() -> None:
    seen: list[list[int]] = []

    async def double(items: Any) -> list[int]:
        seen.append(list(items))
        await asyncio.sleep(0.01)
        return [2 * i for i in items]

    batcher: Batcher[int, int] = Batcher(double, max_batch=3, max_inflight=1, name="test")
    results = await asyncio.gather(*(batcher.submit(i) for i in range(7)))
    assert results == [2 * i for i in range(7)]
    # The first goes alone at once; the rest wait and go in batches of at most 3.
    assert seen == [[0], [1, 2, 3], [4, 5, 6]]
    await batcher.close()


async def test_a_failed_batch_fails_its_callers_only() -> None:
    async def picky(items: Any) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky")
        return list(items)

    batcher: Batcher[int, int] = Batcher(picky, max_batch=1, max_inflight=1, name="test")
    ok, bad = await asyncio.gather(batcher.submit(1), batcher.submit(13), return_exceptions=True)
    assert ok == 1 and isinstance(bad, ValueError)
    assert await batcher.submit(2) == 2
