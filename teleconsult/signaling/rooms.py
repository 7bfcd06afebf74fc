"""Who is in which consultation room, shared by every server process.

A room is a map of peer id → :class:`Peer`. With Redis it is one hash per room
(``tc:room:<room id>``) and every change is one Lua script that reads, decides
and writes the room at once: no lock, one round trip, and two processes cannot
both take the last place. Without Redis the same changes run in this process.

Each peer carries ``link``, the id of the socket binding that holds it, so a
socket that lost its peer (declined, removed, taken over by a rejoin elsewhere)
can be told apart from the one holding it now. Each peer also has a deadline,
kept in one sorted set ``tc:room:due`` (member ``"<room id> <peer id>"``): the end
of its grace period once its socket dropped, or ``silence`` seconds after its
process last vouched for it (:meth:`touch`). :meth:`due` hands each passed
deadline to one process, which drops the peer if it has really expired, so peers
of a process that died are dropped by the others. :meth:`enter` also drops
expired peers of the room it enters.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol
from uuid import UUID

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from teleconsult.core.errors import InfrastructureError
from teleconsult.signaling import room_scripts as scripts

Status = Literal["waiting", "admitted"]
RoomRole = Literal["doctor", "patient", "guest"]
# How a join went: a new peer, the caller's peer back from grace, or no place left.
Outcome = Literal["joined", "rejoined", "full"]
# How an admission went.
Admission = Literal["admitted", "unchanged", "absent", "full"]
# A room's peer as the sweep names it: (room id, peer id).
PeerRef = tuple[str, str]


@dataclass(frozen=True)
class Peer:
    peer_id: str
    user_id: UUID
    role: RoomRole
    status: Status
    connected: bool
    joined_at: float
    seen: float
    grace_until: float | None = None
    link: str = ""
    name: str = ""  # the user's name, shown to the others in the call

    def to_json(self) -> str:
        data = asdict(self)
        data["user_id"] = str(self.user_id)
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Peer:
        data = json.loads(raw)
        data["user_id"] = UUID(data["user_id"])
        return cls(**data)

    def expired(self, now: float, silence: float) -> bool:
        """Its grace period is over, or no process has vouched for it lately."""
        if not self.connected and self.grace_until is not None and self.grace_until <= now:
            return True
        return self.seen + silence < now

    def deadline(self, silence: float) -> float:
        if not self.connected and self.grace_until is not None:
            return self.grace_until
        return self.seen + silence


@dataclass(frozen=True)
class Entry:
    """The result of :meth:`RoomRegistry.enter`.

    ``peer`` is the peer as stored (for ``full``: the one that did not fit);
    ``others`` the rest of the room afterwards, oldest first; ``gone`` the expired
    peers and the caller's older peers that the entry dropped (even when ``full``).
    """

    outcome: Outcome
    peer: Peer
    others: tuple[Peer, ...]
    gone: tuple[Peer, ...]


@dataclass(frozen=True)
class Change:
    """One peer as it is after a change of its room, and the rest of the room."""

    peer: Peer
    others: tuple[Peer, ...]


def new_peer_id() -> str:
    return secrets.token_urlsafe(12)


def new_link() -> str:
    return secrets.token_urlsafe(9)


def _oldest_first(peers: Iterable[Peer]) -> tuple[Peer, ...]:
    return tuple(sorted(peers, key=lambda p: (p.joined_at, p.peer_id)))


class RoomRegistry(Protocol):
    """Each method is one atomic change (or read) of one room, safe across processes."""

    async def peers(self, room_id: str) -> dict[str, Peer]: ...

    async def enter(
        self, room_id: str, candidate: Peer, *, rejoin: str | None, max_peers: int
    ) -> Entry:
        """Drop the room's expired peers; then give the caller back its peer ``rejoin``
        (same user), or drop the user's other peers and add ``candidate`` unless the
        room holds ``max_peers`` already (the doctor always enters). ``candidate.seen``
        is the time now."""
        ...

    async def admit(
        self, room_id: str, peer_id: str, *, max_peers: int
    ) -> tuple[Admission, Change | None]:
        """Admit a waiting peer unless ``max_peers`` are admitted already."""
        ...

    async def drop(
        self,
        room_id: str,
        peer_id: str,
        *,
        link: str | None = None,
        expired_at: float | None = None,
    ) -> Change | None:
        """Remove a peer (only if held by ``link``; only if expired at ``expired_at``)."""
        ...

    async def disconnect(
        self, room_id: str, peer_id: str, *, link: str, grace_until: float
    ) -> Change | None:
        """The socket holding the peer (``link``) dropped: keep it until ``grace_until``."""
        ...

    async def touch(self, held: Sequence[tuple[str, str, str]], now: float) -> list[int]:
        """Vouch for peers (room id, peer id, link) held here; the indexes of those not
        held by that link any more."""
        ...

    async def due(self, now: float, *, limit: int = 500) -> list[PeerRef]:
        """Peers whose deadline passed, each handed to one caller only."""
        ...

    async def close(self) -> None: ...


class LocalRooms:
    """The registry of a single process. Each method runs without awaiting, so atomically."""

    def __init__(self, *, silence: float) -> None:
        self._silence = silence
        self._rooms: dict[str, dict[str, Peer]] = {}

    async def peers(self, room_id: str) -> dict[str, Peer]:
        return dict(self._rooms.get(room_id, {}))

    def _set(self, room_id: str, peer: Peer) -> None:
        self._rooms.setdefault(room_id, {})[peer.peer_id] = peer

    def _forget(self, room_id: str, peer_id: str) -> None:
        room = self._rooms.get(room_id, {})
        room.pop(peer_id, None)
        if not room:
            self._rooms.pop(room_id, None)

    async def enter(
        self, room_id: str, candidate: Peer, *, rejoin: str | None, max_peers: int
    ) -> Entry:
        now = candidate.seen
        room = self._rooms.get(room_id, {})
        gone = [p for p in room.values() if p.expired(now, self._silence)]
        for p in gone:
            self._forget(room_id, p.peer_id)
        room = self._rooms.get(room_id, {})
        mine = room.get(rejoin) if rejoin else None
        if mine is not None and mine.user_id == candidate.user_id:
            back = replace(mine, connected=True, grace_until=None, seen=now, link=candidate.link)
            self._set(room_id, back)
            rest = _oldest_first(p for p in room.values() if p.peer_id != back.peer_id)
            return Entry("rejoined", back, rest, tuple(gone))
        older = [p for p in room.values() if p.user_id == candidate.user_id]
        for p in older:
            self._forget(room_id, p.peer_id)
        gone.extend(older)
        others = _oldest_first(self._rooms.get(room_id, {}).values())
        if candidate.role != "doctor" and len(others) >= max_peers:
            return Entry("full", candidate, others, tuple(gone))
        self._set(room_id, candidate)
        return Entry("joined", candidate, others, tuple(gone))

    async def admit(
        self, room_id: str, peer_id: str, *, max_peers: int
    ) -> tuple[Admission, Change | None]:
        room = self._rooms.get(room_id, {})
        peer = room.get(peer_id)
        if peer is None:
            return "absent", None
        others = _oldest_first(p for p in room.values() if p.peer_id != peer_id)
        if peer.status == "admitted":
            return "unchanged", Change(peer, others)
        if sum(1 for p in others if p.status == "admitted") >= max_peers:
            return "full", None
        peer = replace(peer, status="admitted")
        self._set(room_id, peer)
        return "admitted", Change(peer, others)

    async def drop(
        self,
        room_id: str,
        peer_id: str,
        *,
        link: str | None = None,
        expired_at: float | None = None,
    ) -> Change | None:
        room = self._rooms.get(room_id, {})
        peer = room.get(peer_id)
        if peer is None or (link is not None and peer.link != link):
            return None
        if expired_at is not None and not peer.expired(expired_at, self._silence):
            return None
        self._forget(room_id, peer_id)
        return Change(peer, _oldest_first(self._rooms.get(room_id, {}).values()))

    async def disconnect(
        self, room_id: str, peer_id: str, *, link: str, grace_until: float
    ) -> Change | None:
        room = self._rooms.get(room_id, {})
        peer = room.get(peer_id)
        if peer is None or peer.link != link or not peer.connected:
            return None
        peer = replace(peer, connected=False, grace_until=grace_until)
        self._set(room_id, peer)
        return Change(peer, _oldest_first(p for p in room.values() if p.peer_id != peer_id))

    async def touch(self, held: Sequence[tuple[str, str, str]], now: float) -> list[int]:
        lost: list[int] = []
        for i, (room_id, peer_id, link) in enumerate(held):
            peer = self._rooms.get(room_id, {}).get(peer_id)
            if peer is None or peer.link != link:
                lost.append(i)
            else:
                self._set(room_id, replace(peer, seen=now))
        return lost

    async def due(self, now: float, *, limit: int = 500) -> list[PeerRef]:
        found = [
            (room_id, peer_id)
            for room_id, room in self._rooms.items()
            for peer_id, peer in room.items()
            if peer.expired(now, self._silence)
        ]
        return found[:limit]

    async def close(self) -> None:
        self._rooms.clear()


def _peers(raw: Iterable[str]) -> tuple[Peer, ...]:
    return _oldest_first(Peer.from_json(r) for r in raw)


class RedisRooms:
    _ROOM = "tc:room:"
    _DUE = "tc:room:due"
    _TTL = 12 * 3600  # a room nobody touched for this long is forgotten
    _TOUCH_BATCH = 500

    def __init__(self, url: str, *, silence: float) -> None:
        self._redis = aioredis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True
        )
        self._silence = silence
        self._enter = self._redis.register_script(scripts.ENTER)
        self._admit = self._redis.register_script(scripts.ADMIT)
        self._drop = self._redis.register_script(scripts.DROP)
        self._disconnect = self._redis.register_script(scripts.DISCONNECT)
        self._touch = self._redis.register_script(scripts.TOUCH)
        self._due = self._redis.register_script(scripts.DUE)

    async def _run(self, script: Any, room_id: str, now: float, *args: Any) -> Any:
        keys = [self._ROOM + room_id, self._DUE]
        try:
            return await script(keys=keys, args=[room_id, now, self._silence, self._TTL, *args])
        except RedisError as exc:
            raise InfrastructureError(f"rooms: {exc}") from exc

    async def peers(self, room_id: str) -> dict[str, Peer]:
        try:
            raw = await self._redis.hgetall(self._ROOM + room_id)
        except RedisError as exc:
            raise InfrastructureError(f"rooms: {exc}") from exc
        return {str(k): Peer.from_json(v) for k, v in raw.items()}

    async def enter(
        self, room_id: str, candidate: Peer, *, rejoin: str | None, max_peers: int
    ) -> Entry:
        outcome, peer, others, gone = await self._run(
            self._enter, room_id, candidate.seen, candidate.to_json(), rejoin or "", max_peers
        )
        return Entry(outcome, Peer.from_json(peer), _peers(others), _peers(gone))

    async def admit(
        self, room_id: str, peer_id: str, *, max_peers: int
    ) -> tuple[Admission, Change | None]:
        found = await self._run(self._admit, room_id, 0, peer_id, max_peers)
        if len(found) < 3:
            return found[0], None
        return found[0], Change(Peer.from_json(found[1]), _peers(found[2]))

    async def drop(
        self,
        room_id: str,
        peer_id: str,
        *,
        link: str | None = None,
        expired_at: float | None = None,
    ) -> Change | None:
        found = await self._run(
            self._drop, room_id, expired_at or 0, peer_id, link or "", int(expired_at is not None)
        )
        return Change(Peer.from_json(found[0]), _peers(found[1])) if found else None

    async def disconnect(
        self, room_id: str, peer_id: str, *, link: str, grace_until: float
    ) -> Change | None:
        found = await self._run(self._disconnect, room_id, 0, peer_id, link, grace_until)
        return Change(Peer.from_json(found[0]), _peers(found[1])) if found else None

    async def touch(self, held: Sequence[tuple[str, str, str]], now: float) -> list[int]:
        lost: list[int] = []
        for start in range(0, len(held), self._TOUCH_BATCH):
            batch = held[start : start + self._TOUCH_BATCH]
            keys = [self._DUE, *(self._ROOM + room_id for room_id, _, _ in batch)]
            args: list[Any] = [now, self._silence, self._TTL]
            for entry in batch:
                args.extend(entry)
            try:
                found = await self._touch(keys=keys, args=args)
            except RedisError as exc:
                raise InfrastructureError(f"rooms: {exc}") from exc
            lost.extend(start + int(i) - 1 for i in found)
        return lost

    async def due(self, now: float, *, limit: int = 500) -> list[PeerRef]:
        try:
            members = await self._due(keys=[self._DUE], args=[now, limit])
        except RedisError as exc:
            raise InfrastructureError(f"rooms: {exc}") from exc
        found: list[PeerRef] = []
        for member in members:
            room_id, _, peer_id = member.partition(" ")
            found.append((room_id, peer_id))
        return found

    async def close(self) -> None:
        await self._redis.aclose()


def create_rooms(redis_url: str | None, *, silence: float) -> RoomRegistry:
    """``silence``: seconds without a process vouching for a peer before it is dropped."""
    if redis_url is None:
        return LocalRooms(silence=silence)
    return RedisRooms(redis_url, silence=silence)
