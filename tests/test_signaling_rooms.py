"""The room registry: the same rules in this process and in Redis (one Lua step each)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from uuid import UUID, uuid4

import pytest

from teleconsult.signaling.rooms import (
    LocalRooms,
    Peer,
    RedisRooms,
    RoomRegistry,
    RoomRole,
    new_link,
    new_peer_id,
)
from tests.dbutil import REDIS_URL

SILENCE = 30.0


class _IsolatedRedisRooms(RedisRooms):
    """Deadlines of its own, so no other test's (or server's) peers come due here."""

    def __init__(self, url: str, *, silence: float) -> None:
        self._DUE = f"tc:test:due:{secrets.token_hex(6)}"
        super().__init__(url, silence=silence)


@pytest.fixture(params=["local", "redis"])
async def rooms(request: pytest.FixtureRequest) -> AsyncIterator[RoomRegistry]:
    registry: RoomRegistry = (
        LocalRooms(silence=SILENCE)
        if request.param == "local"
        else _IsolatedRedisRooms(REDIS_URL, silence=SILENCE)
    )
    try:
        yield registry
    finally:
        await registry.close()


def _room() -> str:
    return secrets.token_urlsafe(18)


def _peer(
    user: UUID | None = None,
    role: RoomRole = "patient",
    *,
    now: float | None = None,
) -> Peer:
    at = time.time() if now is None else now
    return Peer(
        peer_id=new_peer_id(),
        user_id=user or uuid4(),
        role=role,
        status="admitted" if role == "doctor" else "waiting",
        connected=True,
        joined_at=at,
        seen=at,
        link=new_link(),
    )


async def test_a_new_peer_of_a_user_replaces_the_older_one(rooms: RoomRegistry) -> None:
    room, doctor = _room(), _peer(role="doctor")
    first = await rooms.enter(room, doctor, rejoin=None, max_peers=4)
    assert first.outcome == "joined" and first.others == () and first.gone == ()
    again = await rooms.enter(room, _peer(doctor.user_id, "doctor"), rejoin=None, max_peers=4)
    assert again.outcome == "joined" and [p.peer_id for p in again.gone] == [doctor.peer_id]
    assert list(await rooms.peers(room)) == [again.peer.peer_id]


async def test_a_rejoin_gets_the_same_peer_back_held_by_the_new_link(rooms: RoomRegistry) -> None:
    room, doctor, patient = _room(), _peer(role="doctor"), _peer()
    await rooms.enter(room, doctor, rejoin=None, max_peers=4)
    await rooms.enter(room, patient, rejoin=None, max_peers=4)
    assert (await rooms.admit(room, patient.peer_id, max_peers=4))[0] == "admitted"
    dropped = await rooms.disconnect(
        room, patient.peer_id, link=patient.link, grace_until=time.time() + 30
    )
    assert dropped is not None and dropped.peer.connected is False
    back = await rooms.enter(room, _peer(patient.user_id), rejoin=patient.peer_id, max_peers=4)
    assert back.outcome == "rejoined" and back.peer.peer_id == patient.peer_id
    assert back.peer.status == "admitted" and back.peer.connected
    assert back.peer.grace_until is None and back.peer.link != patient.link
    assert [p.peer_id for p in back.others] == [doctor.peer_id]
    # The old socket's goodbye no longer counts: the peer is held by the new one.
    assert await rooms.disconnect(room, patient.peer_id, link=patient.link, grace_until=0) is None
    assert await rooms.drop(room, patient.peer_id, link=patient.link) is None
    assert await rooms.touch([(room, patient.peer_id, patient.link)], time.time()) == [0]


async def test_nobody_takes_over_another_users_peer(rooms: RoomRegistry) -> None:
    room, doctor = _room(), _peer(role="doctor")
    await rooms.enter(room, doctor, rejoin=None, max_peers=4)
    intruder = await rooms.enter(room, _peer(), rejoin=doctor.peer_id, max_peers=4)
    assert intruder.outcome == "joined" and intruder.peer.peer_id != doctor.peer_id
    kept = (await rooms.peers(room))[doctor.peer_id]
    assert (kept.user_id, kept.link, kept.connected) == (doctor.user_id, doctor.link, True)


async def test_a_full_room_turns_away_all_but_the_doctor(rooms: RoomRegistry) -> None:
    room = _room()
    for _ in range(2):
        assert (await rooms.enter(room, _peer(), rejoin=None, max_peers=2)).outcome == "joined"
    full = await rooms.enter(room, _peer(), rejoin=None, max_peers=2)
    assert full.outcome == "full" and len(full.others) == 2
    doctor = await rooms.enter(room, _peer(role="doctor"), rejoin=None, max_peers=2)
    assert doctor.outcome == "joined" and len(await rooms.peers(room)) == 3


async def test_admission_counts_admitted_peers_only(rooms: RoomRegistry) -> None:
    room, doctor = _room(), _peer(role="doctor")
    waiting = [_peer() for _ in range(2)]
    await rooms.enter(room, doctor, rejoin=None, max_peers=2)
    for p in waiting:
        await rooms.enter(room, p, rejoin=None, max_peers=3)
    outcome, change = await rooms.admit(room, waiting[0].peer_id, max_peers=2)
    assert outcome == "admitted" and change is not None and change.peer.status == "admitted"
    assert {p.peer_id for p in change.others} == {doctor.peer_id, waiting[1].peer_id}
    assert (await rooms.admit(room, waiting[0].peer_id, max_peers=2))[0] == "unchanged"
    assert await rooms.admit(room, waiting[1].peer_id, max_peers=2) == ("full", None)
    assert await rooms.admit(room, new_peer_id(), max_peers=2) == ("absent", None)


async def test_grace_ends_and_silent_peers_come_due_once(rooms: RoomRegistry) -> None:
    room, now = _room(), time.time()
    doctor, patient = _peer(role="doctor", now=now), _peer(now=now)
    await rooms.enter(room, doctor, rejoin=None, max_peers=4)
    await rooms.enter(room, patient, rejoin=None, max_peers=4)
    await rooms.disconnect(room, patient.peer_id, link=patient.link, grace_until=now + 5)
    assert await rooms.due(now + 1) == []
    assert await rooms.drop(room, patient.peer_id, expired_at=now + 1) is None
    assert await rooms.due(now + 6) == [(room, patient.peer_id)]
    gone = await rooms.drop(room, patient.peer_id, expired_at=now + 6)
    assert gone is not None and [p.peer_id for p in gone.others] == [doctor.peer_id]
    # The doctor's process vouches for it; once it stops, the doctor comes due too.
    assert await rooms.touch([(room, doctor.peer_id, doctor.link)], now + 20) == []
    assert await rooms.due(now + SILENCE + 10) == []
    later = now + 20 + SILENCE + 1
    assert await rooms.due(later) == [(room, doctor.peer_id)]
    if isinstance(rooms, RedisRooms):
        assert await rooms.due(later) == []  # handed out once
    left = await rooms.drop(room, doctor.peer_id, expired_at=later)
    assert left is not None and left.others == () and await rooms.peers(room) == {}


async def test_entering_drops_the_rooms_expired_peers(rooms: RoomRegistry) -> None:
    room, now = _room(), time.time()
    silent = _peer(role="doctor", now=now - SILENCE - 5)
    await rooms.enter(room, silent, rejoin=None, max_peers=4)
    entry = await rooms.enter(room, _peer(now=now), rejoin=None, max_peers=4)
    assert [p.peer_id for p in entry.gone] == [silent.peer_id] and entry.others == ()


async def test_two_processes_never_both_take_the_last_place() -> None:
    room = _room()
    processes = [_IsolatedRedisRooms(REDIS_URL, silence=SILENCE) for _ in range(4)]
    try:
        entries = await asyncio.gather(
            *(processes[i % 4].enter(room, _peer(), rejoin=None, max_peers=3) for i in range(24))
        )
        assert sum(e.outcome == "joined" for e in entries) == 3
        assert len(await processes[0].peers(room)) == 3
    finally:
        for registry in processes:
            await registry.close()


def test_a_peer_reads_back_what_it_wrote() -> None:
    peer = replace(_peer(), connected=False, grace_until=123.5)
    assert Peer.from_json(peer.to_json()) == peer
