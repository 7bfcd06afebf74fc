"""Which consultation rooms are on the SFU, shared by every server process.

A room on the SFU has its consultation, its backend and, while one runs, the SFU's
recording id. With Redis (``REDIS_URL``) that is one hash per room
(``tc:sfu:<room id>``), each change one atomic command or script, so a join, an
admission, a removal or a recording on any process sees what another process did
(docs/rtc.md, "Several server processes"). Without Redis, a dict of this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from teleconsult.core.errors import InfrastructureError


@dataclass(frozen=True)
class SfuRoomState:
    consultation_id: UUID
    backend: str
    recording: str | None = None


_MARK = """
if redis.call('HEXISTS', KEYS[1], 'consultation') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'consultation', ARGV[1], 'backend', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

_START = """
if redis.call('HEXISTS', KEYS[1], 'consultation') == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'recording', ARGV[1])
"""

_TAKE = """
local found = redis.call('HGET', KEYS[1], 'recording')
if found then redis.call('HDEL', KEYS[1], 'recording') end
return found
"""


class SfuRooms(Protocol):
    async def get(self, room_id: str) -> SfuRoomState | None:
        """The room's state if it is on the SFU."""
        ...

    async def mark(self, room_id: str, consultation_id: UUID, backend: str) -> bool:
        """The room is on the SFU; whether this call put it there."""
        ...

    async def clear(self, room_id: str) -> None:
        """The room left the SFU (it emptied)."""
        ...

    async def start_recording(self, room_id: str, recording_id: str) -> bool:
        """Record the running recording unless one runs; whether this one was kept."""
        ...

    async def take_recording(self, room_id: str) -> str | None:
        """Forget the running recording; its id, if one ran."""
        ...

    async def close(self) -> None: ...


class LocalSfuRooms:
    def __init__(self) -> None:
        self._rooms: dict[str, SfuRoomState] = {}

    async def get(self, room_id: str) -> SfuRoomState | None:
        return self._rooms.get(room_id)

    async def mark(self, room_id: str, consultation_id: UUID, backend: str) -> bool:
        if room_id in self._rooms:
            return False
        self._rooms[room_id] = SfuRoomState(consultation_id, backend)
        return True

    async def clear(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)

    async def start_recording(self, room_id: str, recording_id: str) -> bool:
        room = self._rooms.get(room_id)
        if room is None or room.recording is not None:
            return False
        self._rooms[room_id] = SfuRoomState(room.consultation_id, room.backend, recording_id)
        return True

    async def take_recording(self, room_id: str) -> str | None:
        room = self._rooms.get(room_id)
        if room is None or room.recording is None:
            return None
        self._rooms[room_id] = SfuRoomState(room.consultation_id, room.backend)
        return room.recording

    async def close(self) -> None:
        self._rooms.clear()


class RedisSfuRooms:
    _KEY = "tc:sfu:"
    _TTL = 12 * 3600  # as the room registry's rooms

    def __init__(self, url: str) -> None:
        self._redis = aioredis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True
        )
        self._mark = self._redis.register_script(_MARK)
        self._start = self._redis.register_script(_START)
        self._take = self._redis.register_script(_TAKE)

    async def _call(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await call(*args, **kwargs)
        except RedisError as exc:
            raise InfrastructureError(f"sfu rooms: {exc}") from exc

    async def get(self, room_id: str) -> SfuRoomState | None:
        found = await self._call(self._redis.hgetall, self._KEY + room_id)
        if not found or "consultation" not in found:
            return None
        return SfuRoomState(UUID(found["consultation"]), found["backend"], found.get("recording"))

    async def mark(self, room_id: str, consultation_id: UUID, backend: str) -> bool:
        keys, args = [self._KEY + room_id], [str(consultation_id), backend, self._TTL]
        return bool(await self._call(self._mark, keys=keys, args=args))

    async def clear(self, room_id: str) -> None:
        await self._call(self._redis.delete, self._KEY + room_id)

    async def start_recording(self, room_id: str, recording_id: str) -> bool:
        keys = [self._KEY + room_id]
        return bool(await self._call(self._start, keys=keys, args=[recording_id]))

    async def take_recording(self, room_id: str) -> str | None:
        found = await self._call(self._take, keys=[self._KEY + room_id], args=[])
        return str(found) if found else None

    async def close(self) -> None:
        await self._redis.aclose()


def create_sfu_rooms(redis_url: str | None) -> SfuRooms:
    return LocalSfuRooms() if redis_url is None else RedisSfuRooms(redis_url)
