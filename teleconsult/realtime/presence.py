"""Who has a live real-time connection, across every server process.

Each connection is an entry that expires ``ttl`` seconds after its last
refresh, so a process that dies without saying goodbye stops counting after a
while. With Redis the entries live in one sorted set per user (member: the
connection id, score: when it expires); without Redis, in this process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol
from uuid import UUID

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from teleconsult.core.errors import InfrastructureError


class Presence(Protocol):
    async def connected(self, user_id: UUID, conn_id: str) -> bool:
        """Record a connection; True when the user had none before (came online)."""
        ...

    async def disconnected(self, user_id: UUID, conn_id: str) -> bool:
        """Forget a connection; True when the user has none left (went offline)."""
        ...

    async def refresh(self, entries: Iterable[tuple[UUID, str]]) -> None: ...

    async def online(self, user_ids: Iterable[UUID]) -> set[UUID]: ...

    async def close(self) -> None: ...


class LocalPresence:
    """In this process only. A user's entries are kept as one ``(conn_id, until)``
    pair while there is one (most users), as a dict beyond that."""

    def __init__(self, *, ttl: float) -> None:
        self._ttl = ttl
        self._entries: dict[UUID, tuple[str, float] | dict[str, float]] = {}

    def _live(self, user_id: UUID, now: float) -> dict[str, float]:
        found = self._entries.get(user_id)
        if found is None:
            return {}
        entries = dict([found]) if isinstance(found, tuple) else found
        return {c: until for c, until in entries.items() if until > now}

    def _keep(self, user_id: UUID, entries: dict[str, float]) -> None:
        if not entries:
            self._entries.pop(user_id, None)
        elif len(entries) == 1:
            self._entries[user_id] = next(iter(entries.items()))
        else:
            self._entries[user_id] = entries

    async def connected(self, user_id: UUID, conn_id: str) -> bool:
        now = time.monotonic()
        entries = self._live(user_id, now)
        was_offline = not entries
        entries[conn_id] = now + self._ttl
        self._keep(user_id, entries)
        return was_offline

    async def disconnected(self, user_id: UUID, conn_id: str) -> bool:
        entries = self._live(user_id, time.monotonic())
        entries.pop(conn_id, None)
        self._keep(user_id, entries)
        return not entries

    async def refresh(self, entries: Iterable[tuple[UUID, str]]) -> None:
        now = time.monotonic()
        until = now + self._ttl
        for user_id, conn_id in entries:
            found = self._entries.get(user_id)
            if isinstance(found, tuple) and found[0] == conn_id:
                self._entries[user_id] = (conn_id, until)  # the common case, no dict
                continue
            live = self._live(user_id, now)
            live[conn_id] = until
            self._keep(user_id, live)

    async def online(self, user_ids: Iterable[UUID]) -> set[UUID]:
        now = time.monotonic()
        return {u for u in user_ids if self._live(u, now)}

    async def close(self) -> None:
        self._entries.clear()


class RedisPresence:
    """Sorted sets ``tc:presence:<user id>``; Redis time is the clock for every process."""

    _PREFIX = "tc:presence:"

    def __init__(self, url: str, *, ttl: int) -> None:
        self._redis = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._ttl = ttl

    def _key(self, user_id: UUID) -> str:
        return f"{self._PREFIX}{user_id}"

    async def _now(self) -> float:
        seconds, micros = await self._redis.time()
        return float(seconds) + micros / 1e6

    async def connected(self, user_id: UUID, conn_id: str) -> bool:
        key = self._key(user_id)
        try:
            now = await self._now()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.zcard(key)
                pipe.zadd(key, {conn_id: now + self._ttl})
                pipe.expire(key, self._ttl * 2)
                _, before, _, _ = await pipe.execute()
        except RedisError as exc:
            raise InfrastructureError(f"presence: {exc}") from exc
        return int(before) == 0

    async def disconnected(self, user_id: UUID, conn_id: str) -> bool:
        key = self._key(user_id)
        try:
            now = await self._now()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(key, conn_id)
                pipe.zcount(key, now, "+inf")
                _, left = await pipe.execute()
        except RedisError as exc:
            raise InfrastructureError(f"presence: {exc}") from exc
        return int(left) == 0

    async def refresh(self, entries: Iterable[tuple[UUID, str]]) -> None:
        items = list(entries)
        if not items:
            return
        try:
            until = await self._now() + self._ttl
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id, conn_id in items:
                    pipe.zadd(self._key(user_id), {conn_id: until})
                    pipe.expire(self._key(user_id), self._ttl * 2)
                await pipe.execute()
        except RedisError as exc:
            raise InfrastructureError(f"presence: {exc}") from exc

    async def online(self, user_ids: Iterable[UUID]) -> set[UUID]:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return set()
        try:
            now = await self._now()
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.zcount(self._key(user_id), now, "+inf")
                counts = await pipe.execute()
        except RedisError as exc:
            raise InfrastructureError(f"presence: {exc}") from exc
        return {u for u, count in zip(users, counts, strict=True) if int(count) > 0}

    async def close(self) -> None:
        await self._redis.aclose()


def create_presence(redis_url: str | None, *, ttl: int) -> Presence:
    if redis_url is None:
        return LocalPresence(ttl=ttl)
    return RedisPresence(redis_url, ttl=ttl)
