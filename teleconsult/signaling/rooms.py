"""Who is in which consultation room, shared by every server process.

A room is a map of peer id → :class:`Peer`. With Redis it is one hash per room
(``tc:room:<room id>``) and changes to a room are made under a short Redis
lock, so two processes cannot both take the last place; without Redis both
live in this process. Entries carry when their process last vouched for them
(``seen``), so peers of a process that died are pruned by whoever looks next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace
from typing import Literal, Protocol
from uuid import UUID

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from teleconsult.core.errors import InfrastructureError

Status = Literal["waiting", "admitted"]
RoomRole = Literal["doctor", "patient", "guest"]


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

    def to_json(self) -> str:
        data = asdict(self)
        data["user_id"] = str(self.user_id)
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Peer:
        data = json.loads(raw)
        data["user_id"] = UUID(data["user_id"])
        return cls(**data)

    def touched(self, now: float) -> Peer:
        return replace(self, seen=now)


def new_peer_id() -> str:
    return secrets.token_urlsafe(12)


class RoomRegistry(Protocol):
    def locked(self, room_id: str) -> contextlib.AbstractAsyncContextManager[None]: ...
    async def peers(self, room_id: str) -> dict[str, Peer]: ...
    async def put(self, room_id: str, peer: Peer) -> None: ...
    async def remove(self, room_id: str, peer_id: str) -> None: ...
    async def touch(self, entries: list[tuple[str, str]], now: float) -> None: ...
    async def close(self) -> None: ...


class LocalRooms:
    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, Peer]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def locked(self, room_id: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            yield
        if not lock.locked() and not self._rooms.get(room_id):
            self._locks.pop(room_id, None)

    async def peers(self, room_id: str) -> dict[str, Peer]:
        return dict(self._rooms.get(room_id, {}))

    async def put(self, room_id: str, peer: Peer) -> None:
        self._rooms.setdefault(room_id, {})[peer.peer_id] = peer

    async def remove(self, room_id: str, peer_id: str) -> None:
        room = self._rooms.get(room_id, {})
        room.pop(peer_id, None)
        if not room:
            self._rooms.pop(room_id, None)

    async def touch(self, entries: list[tuple[str, str]], now: float) -> None:
        for room_id, peer_id in entries:
            peer = self._rooms.get(room_id, {}).get(peer_id)
            if peer is not None:
                self._rooms[room_id][peer_id] = peer.touched(now)

    async def close(self) -> None:
        self._rooms.clear()


_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisRooms:
    _ROOM = "tc:room:"
    _LOCK = "tc:roomlock:"
    _TTL = 12 * 3600  # a room nobody touched for this long is forgotten

    def __init__(self, url: str) -> None:
        self._redis = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    @contextlib.asynccontextmanager
    async def locked(self, room_id: str) -> AsyncIterator[None]:
        key, token = self._LOCK + room_id, secrets.token_hex(8)
        deadline = time.monotonic() + 5.0
        try:
            while not await self._redis.set(key, token, nx=True, px=5000):
                if time.monotonic() > deadline:
                    raise InfrastructureError(f"room {room_id} stayed locked")
                await asyncio.sleep(0.01)
            try:
                yield
            finally:
                await self._redis.eval(_RELEASE, 1, key, token)
        except RedisError as exc:
            raise InfrastructureError(f"rooms: {exc}") from exc

    async def peers(self, room_id: str) -> dict[str, Peer]:
        try:
            raw = await self._redis.hgetall(self._ROOM + room_id)
        except RedisError as exc:
            raise InfrastructureError(f"rooms: {exc}") from exc
        return {
            k.decode() if isinstance(k, bytes) else k: Peer.from_json(v) for k, v in raw.items()
        }

    async def put(self, room_id: str, peer: Peer) -> None:
        key = self._ROOM + room_id
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, peer.peer_id, peer.to_json())
                pipe.expire(key, self._TTL)
                await pipe.execute()
        except RedisError as exc:
            raise InfrastructureError(f"rooms: {exc}") from exc

    async def remove(self, room_id: str, peer_id: str) -> None:
        try:
            await self._redis.hdel(self._ROOM + room_id, peer_id)
        except RedisError as exc:
            raise InfrastructureError(f"rooms: {exc}") from exc

    async def touch(self, entries: list[tuple[str, str]], now: float) -> None:
        for room_id, peer_id in entries:
            async with self.locked(room_id):
                peer = (await self.peers(room_id)).get(peer_id)
                if peer is not None:
                    await self.put(room_id, peer.touched(now))

    async def close(self) -> None:
        await self._redis.aclose()


def create_rooms(redis_url: str | None) -> RoomRegistry:
    return LocalRooms() if redis_url is None else RedisRooms(redis_url)
