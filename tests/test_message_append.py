"""Group commit on the real database: batches of appends, their audit events, their refusals."""

from __future__ import annotations

import asyncio
import secrets
from uuid import UUID

import asyncpg

from teleconsult.core.errors import InfrastructureError
from teleconsult.messaging import message_store, store
from teleconsult.messaging.appender import Appender
from teleconsult.messaging.message_store import Append
from teleconsult.messaging.records import (
    AppendResult,
    ConflictingDuplicate,
    NotAMember,
    Thread,
    ThreadKind,
)
from tests.test_messaging_store import Ward, client_id, make_ward, new_device


def _item(
    ward: Ward, thread: Thread, sender: UUID, cmid: str | None = None, body: bytes = b"x"
) -> Append:
    return Append(
        thread_id=thread.id,
        client_msg_id=cmid or client_id(),
        sender_user_id=sender,
        sender_device_id=ward.devices[sender].id,
        envelope=body,
        actor_role="doctor",
    )


async def _care_team(ward: Ward) -> Thread:
    return await store.create_thread(
        ward.pool,
        clinic_id=ward.clinic_id,
        kind=ThreadKind.CARE_TEAM,
        created_by=ward.doctor,
        members=[(ward.doctor, "lead"), (ward.nurse, "member"), (ward.patient, "member")],
    )


async def _audited(pool: asyncpg.Pool, thread_id: UUID) -> list[int]:
    rows = await pool.fetch(
        """
        SELECT (detail->>'seq')::bigint AS seq FROM (
            SELECT detail FROM audit_log WHERE action = 'message.send' AND object_id = $1
            UNION ALL
            SELECT detail FROM audit_intake WHERE action = 'message.send' AND object_id = $1
        ) e ORDER BY 1
        """,
        str(thread_id),
    )
    return [r["seq"] for r in rows]


async def test_a_batch_appends_to_several_threads_in_one_round_trip(pool: asyncpg.Pool) -> None:
    ward = await make_ward(pool)
    team = await _care_team(ward)
    items = [
        _item(ward, ward.thread if n % 2 else team, ward.doctor, body=f"{n}".encode())
        for n in range(10)
    ]
    async with pool.acquire() as conn:
        outcomes = await message_store.append_batch(conn, items)
    results = [o for o in outcomes if isinstance(o, AppendResult) and not o.duplicate]
    assert len(results) == len(items), outcomes
    # Each thread's messages got gapless seqs in the order they were given.
    direct = [o.seq for o, i in zip(results, items, strict=True) if i.thread_id == ward.thread.id]
    teams = [o.seq for o, i in zip(results, items, strict=True) if i.thread_id == team.id]
    assert direct == [1, 2, 3, 4, 5] and teams == [1, 2, 3, 4, 5]
    assert await _audited(pool, ward.thread.id) == [1, 2, 3, 4, 5]
    assert await _audited(pool, team.id) == [1, 2, 3, 4, 5]


async def test_refusals_and_duplicates_in_a_batch_leave_the_others_stored(
    pool: asyncpg.Pool,
) -> None:
    ward = await make_ward(pool)
    stored = await ward.send("already")
    items = [
        _item(ward, ward.thread, ward.doctor, "new-1"),
        # the same id and bytes as a stored message: its seq comes back
        _item(ward, ward.thread, ward.doctor, "already", b"\x00ciphertext\xff"),
        # the nurse is no member of this thread
        _item(ward, ward.thread, ward.nurse),
        # the same id with other bytes
        _item(ward, ward.thread, ward.doctor, "already", b"other"),
        # twice the same new id in one batch: stored once
        _item(ward, ward.thread, ward.doctor, "twice"),
        _item(ward, ward.thread, ward.doctor, "twice"),
    ]
    async with pool.acquire() as conn:
        outcomes = await message_store.append_batch(conn, items)
    first, dup, stranger, reused, twice, again = outcomes
    assert isinstance(first, AppendResult) and first.seq == 2
    assert isinstance(dup, AppendResult) and dup.duplicate and dup.seq == stored.seq
    assert isinstance(stranger, NotAMember)
    assert isinstance(reused, ConflictingDuplicate)
    assert isinstance(twice, AppendResult) and twice.seq == 3 and not twice.duplicate
    assert isinstance(again, AppendResult) and again.seq == 3 and again.duplicate
    assert await ward.stored_seqs() == [1, 2, 3]
    assert await _audited(pool, ward.thread.id) == [1, 2, 3]


async def test_one_broken_append_does_not_fail_its_batch(pool: asyncpg.Pool) -> None:
    ward = await make_ward(pool)
    bad = _item(ward, ward.thread, ward.doctor, cmid="x" * 10_000)  # past the column's CHECK
    good = _item(ward, ward.thread, ward.doctor)
    async with pool.acquire() as conn:
        outcomes = await message_store.append_batch(conn, [bad, good])
    assert isinstance(outcomes[0], InfrastructureError)
    assert isinstance(outcomes[1], AppendResult) and outcomes[1].seq == 1
    assert await ward.stored_seqs() == [1]


async def test_concurrent_appenders_on_shared_threads_never_deadlock_or_skip(
    database_url: str,
) -> None:
    from teleconsult.core.db import create_pool

    db = await create_pool(database_url, min_size=4, max_size=8)
    try:
        ward = await make_ward(db)
        teams = [await _care_team(ward) for _ in range(3)]
        threads = [ward.thread, *teams]
        # Two processes' worth of group commit, sending into the same threads in
        # opposite orders.
        one = Appender(db, max_batch=16, max_inflight=2)
        two = Appender(db, max_batch=16, max_inflight=2)
        per_sender = 40

        async def sender(appender: Appender, order: list[Thread], tag: str) -> list[AppendResult]:
            results = []
            for n in range(per_sender):
                thread = order[n % len(order)]
                outcome = await appender.append(_item(ward, thread, ward.doctor, f"{tag}-{n}"))
                assert isinstance(outcome, AppendResult), outcome
                results.append(outcome)
            return results

        async with asyncio.timeout(60):
            await asyncio.gather(
                *(sender(one, threads, f"a{k}") for k in range(4)),
                *(sender(two, threads[::-1], f"b{k}") for k in range(4)),
            )
        for thread in threads:
            seqs = [
                r["seq"]
                for r in await db.fetch(
                    "SELECT seq FROM messages WHERE thread_id = $1 ORDER BY seq", thread.id
                )
            ]
            assert seqs == list(range(1, len(seqs) + 1))
            assert await _audited(db, thread.id) == seqs
        total = await db.fetchval(
            "SELECT count(*) FROM messages WHERE thread_id = ANY($1::uuid[])",
            [t.id for t in threads],
        )
        assert total == 8 * per_sender
        assert one.batches + two.batches < 8 * per_sender  # some sends shared a round trip
    finally:
        await db.close()


async def test_a_device_registered_behind_the_directorys_back_is_confirmed_not_refused(
    pool: asyncpg.Pool,
) -> None:
    """A stale directory may not refuse: a seal for a device it does not know yet is
    checked against the database before ``not_a_recipient``."""
    from teleconsult.core.bus import InProcessBus
    from teleconsult.messaging.directory import ThreadDirectory

    ward = await make_ward(pool)
    bus = InProcessBus()
    directory = ThreadDirectory(pool, bus, ttl=3600)
    before = await directory.thread(ward.thread.id)
    assert before is not None
    fresh = await new_device(pool, ward.patient)  # not announced to the directory
    cached = await directory.thread(ward.thread.id)
    assert cached is before and fresh.id not in cached.devices
    confirmed = await directory.fresh(ward.thread.id)
    assert confirmed is not None and fresh.id in confirmed.devices
    assert (await directory.thread(ward.thread.id)) is confirmed
    await directory.close()
    await bus.close()


async def test_a_change_announced_on_one_process_drops_the_entry_on_another(
    pool: asyncpg.Pool,
) -> None:
    from teleconsult.core.bus import RedisBus
    from teleconsult.messaging.directory import ThreadDirectory
    from tests.dbutil import REDIS_URL

    ward = await make_ward(pool)
    prefix = f"tc-test-{secrets.token_hex(4)}:"
    bus_a, bus_b = RedisBus(REDIS_URL, prefix=prefix), RedisBus(REDIS_URL, prefix=prefix)
    await bus_a.start()
    await bus_b.start()
    a = ThreadDirectory(pool, bus_a, ttl=3600)
    b = ThreadDirectory(pool, bus_b, ttl=3600)
    try:
        await a.start()
        await b.start()
        assert await b.thread(ward.thread.id) is not None
        loads = b.loads
        await a.forget_user(ward.patient)
        async with asyncio.timeout(10):
            while True:
                await b.thread(ward.thread.id)
                if b.loads > loads:
                    break
                await asyncio.sleep(0.05)
    finally:
        await a.close()
        await b.close()
        await bus_a.close()
        await bus_b.close()
