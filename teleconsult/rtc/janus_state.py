"""What every server process must agree on about a Janus room (docs/rtc.md,
"Several server processes"): who is granted into it, with which role, and the
recording that runs in it.

A participant's join token is derived, never stored: HMAC(room key, consultation,
identity, nonce), where the nonce is a random value kept here per participant,
made at their first grant and deleted when they are removed. Any process can so
grant, relay and remove anyone; a removed participant's next grant gets a fresh
nonce, hence a new token, and their old one is never derived (nor allowed) again.
Janus's ``allowed`` list stays the source of truth for who may join.

With Redis (``REDIS_URL``) this is one hash per consultation (``tc:janus:<id>``:
``n:<identity>`` the nonce, ``r:<identity>`` the role, ``rec`` the running
recording's id), each change one Lua script; without, a dict of this process.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol
from uuid import UUID

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from teleconsult.core.errors import InfrastructureError

# (nonce, role) of a granted participant.
Granted = tuple[str, str]

_GRANT = """
local n = redis.call('HGET', KEYS[1], 'n:' .. ARGV[1])
if not n then
  n = ARGV[3]
  redis.call('HSET', KEYS[1], 'n:' .. ARGV[1], n)
end
redis.call('HSET', KEYS[1], 'r:' .. ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return n
"""

_REVOKE = """
local n = redis.call('HGET', KEYS[1], 'n:' .. ARGV[1])
redis.call('HDEL', KEYS[1], 'n:' .. ARGV[1], 'r:' .. ARGV[1])
return n
"""

_START = """
redis.call('HSETNX', KEYS[1], 'rec', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HGET', KEYS[1], 'rec')
"""

_TAKE = """
if redis.call('HGET', KEYS[1], 'rec') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'rec')
  return 1
end
return 0
"""


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


class JanusState(Protocol):
    async def grant(self, consultation_id: UUID, identity: str, role: str) -> str:
        """Record the grant (the role replaces an earlier one); the participant's nonce,
        made now unless they hold one."""
        ...

    async def granted(self, consultation_id: UUID, identity: str) -> Granted | None: ...

    async def revoke(self, consultation_id: UUID, identity: str) -> str | None:
        """Forget the participant's grant; the nonce they held, if any."""
        ...

    async def start_recording(self, consultation_id: UUID, recording_id: str) -> str:
        """Record ``recording_id`` unless one runs; the one that runs now."""
        ...

    async def recording(self, consultation_id: UUID) -> str | None: ...

    async def take_recording(self, consultation_id: UUID, recording_id: str) -> bool:
        """Forget the running recording if it is ``recording_id``; whether it was."""
        ...

    async def close(self) -> None: ...


class LocalJanusState:
    """The state of a single process."""

    def __init__(self) -> None:
        self._rooms: dict[UUID, dict[str, str]] = {}

    def _room(self, consultation_id: UUID) -> dict[str, str]:
        return self._rooms.setdefault(consultation_id, {})

    async def grant(self, consultation_id: UUID, identity: str, role: str) -> str:
        room = self._room(consultation_id)
        nonce = room.setdefault("n:" + identity, new_nonce())
        room["r:" + identity] = role
        return nonce

    async def granted(self, consultation_id: UUID, identity: str) -> Granted | None:
        room = self._rooms.get(consultation_id, {})
        nonce, role = room.get("n:" + identity), room.get("r:" + identity)
        return (nonce, role) if nonce is not None and role is not None else None

    async def revoke(self, consultation_id: UUID, identity: str) -> str | None:
        room = self._room(consultation_id)
        room.pop("r:" + identity, None)
        return room.pop("n:" + identity, None)

    async def start_recording(self, consultation_id: UUID, recording_id: str) -> str:
        return self._room(consultation_id).setdefault("rec", recording_id)

    async def recording(self, consultation_id: UUID) -> str | None:
        return self._rooms.get(consultation_id, {}).get("rec")

    async def take_recording(self, consultation_id: UUID, recording_id: str) -> bool:
        room = self._room(consultation_id)
        if room.get("rec") != recording_id:
            return False
        del room["rec"]
        return True

    async def close(self) -> None:
        self._rooms.clear()


class RedisJanusState:
    """The state shared by every process through Redis."""

    _KEY = "tc:janus:"
    # Nonces outlive the room: a removed participant must never get the old one back.
    _TTL = 30 * 24 * 3600

    def __init__(self, url: str) -> None:
        self._redis = aioredis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, decode_responses=True
        )
        self._grant = self._redis.register_script(_GRANT)
        self._revoke = self._redis.register_script(_REVOKE)
        self._start = self._redis.register_script(_START)
        self._take = self._redis.register_script(_TAKE)

    async def _run(self, script: Any, consultation_id: UUID, *args: Any) -> Any:
        try:
            return await script(keys=[self._KEY + str(consultation_id)], args=list(args))
        except RedisError as exc:
            raise InfrastructureError(f"janus state: {exc}") from exc

    async def grant(self, consultation_id: UUID, identity: str, role: str) -> str:
        return str(
            await self._run(self._grant, consultation_id, identity, role, new_nonce(), self._TTL)
        )

    async def granted(self, consultation_id: UUID, identity: str) -> Granted | None:
        try:
            nonce, role = await self._redis.hmget(
                self._KEY + str(consultation_id), ["n:" + identity, "r:" + identity]
            )
        except RedisError as exc:
            raise InfrastructureError(f"janus state: {exc}") from exc
        return (str(nonce), str(role)) if nonce is not None and role is not None else None

    async def revoke(self, consultation_id: UUID, identity: str) -> str | None:
        found = await self._run(self._revoke, consultation_id, identity)
        return str(found) if found else None

    async def start_recording(self, consultation_id: UUID, recording_id: str) -> str:
        return str(await self._run(self._start, consultation_id, recording_id, self._TTL))

    async def recording(self, consultation_id: UUID) -> str | None:
        try:
            found = await self._redis.hget(self._KEY + str(consultation_id), "rec")
        except RedisError as exc:
            raise InfrastructureError(f"janus state: {exc}") from exc
        return str(found) if found is not None else None

    async def take_recording(self, consultation_id: UUID, recording_id: str) -> bool:
        return bool(await self._run(self._take, consultation_id, recording_id))

    async def close(self) -> None:
        await self._redis.aclose()


def create_janus_state(redis_url: str | None) -> JanusState:
    return LocalJanusState() if redis_url is None else RedisJanusState(redis_url)
