"""Sliding-window rate limiting: login attempts per account and address, chat events.

An event counts against its key for ``window`` seconds after it happened
(a sliding log, not fixed buckets, so a burst cannot straddle a boundary to get
twice the limit). ``hit`` records an event only when it is within the limit: a
refused attempt is not recorded, so a client that keeps trying regains access
as its old events age out, and a flood cannot grow a key without bound.

Keys are opaque strings and are stored as given (the Redis limiter puts them in
key names); callers should build them from identifiers, not personal data.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from teleconsult.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

DEFAULT_MAX_KEYS = 100_000


@dataclass(frozen=True)
class RateDecision:
    """The outcome of a check.

    ``count`` is the number of events in the window; for ``hit`` it includes
    the event being checked (so a refused hit has ``count == limit + 1`` or more).
    ``retry_after`` is the number of whole seconds until one more event would be
    allowed, at least 1 when refused and 0 when allowed.
    """

    allowed: bool
    count: int
    retry_after: int


class RateLimiter(Protocol):
    async def peek(self, key: str, limit: int, window: int) -> RateDecision:
        """Would one more event be allowed? Records nothing."""
        ...

    async def hit(self, key: str, limit: int, window: int) -> RateDecision:
        """Record one event if within the limit, and say whether it was."""
        ...

    async def reset(self, key: str) -> None:
        """Forget every event of ``key``."""
        ...

    async def close(self) -> None: ...


def _check_arguments(limit: int, window: float) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")


def _whole_seconds(seconds: float) -> int:
    """Round a wait up to whole seconds, never below 1."""
    return max(1, math.ceil(seconds))


@dataclass
class _EventLog:
    window: float
    times: deque[float] = field(default_factory=deque)

    def prune(self, now: float, window: float) -> None:
        horizon = now - window
        while self.times and self.times[0] <= horizon:
            self.times.popleft()


class InMemoryRateLimiter:
    """A limiter for one server process.

    Memory is bounded: expired events are pruned whenever a key is used, keys
    whose events have all expired are forgotten, and at most ``max_keys`` keys
    are tracked; beyond that the key with the stalest last event is evicted
    (which forgets its history, so size ``max_keys`` for the expected load).

    The methods never await, so each runs atomically on the event loop; the
    limiter is not thread-safe.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._clock = clock
        self._max_keys = max_keys
        # Ordered by each key's last recorded event, stalest first.
        self._logs: OrderedDict[str, _EventLog] = OrderedDict()
        self._evicted = 0

    @property
    def tracked_keys(self) -> int:
        return len(self._logs)

    @property
    def evicted_keys(self) -> int:
        """Keys forgotten early because ``max_keys`` was reached, since creation."""
        return self._evicted

    async def peek(self, key: str, limit: int, window: int) -> RateDecision:
        return self._decide(key, limit, window, record=False)

    async def hit(self, key: str, limit: int, window: int) -> RateDecision:
        return self._decide(key, limit, window, record=True)

    async def reset(self, key: str) -> None:
        self._logs.pop(key, None)

    async def close(self) -> None:
        self._logs.clear()

    def _decide(self, key: str, limit: int, window: float, *, record: bool) -> RateDecision:
        _check_arguments(limit, window)
        now = self._clock()
        self._forget_expired(now)
        log = self._logs.get(key)
        if log is not None:
            log.prune(now, window)
            if not log.times:
                del self._logs[key]
                log = None
        count = len(log.times) if log is not None else 0
        if count >= limit:
            assert log is not None
            # One more is allowed once all but limit - 1 events have expired.
            oldest_blocking = log.times[count - limit]
            return RateDecision(
                allowed=False,
                count=count + 1 if record else count,
                retry_after=_whole_seconds(oldest_blocking + window - now),
            )
        if not record:
            return RateDecision(allowed=True, count=count, retry_after=0)
        if log is None:
            log = self._logs[key] = _EventLog(window)
            self._evict_over_cap()
        log.window = window
        log.times.append(now)
        self._logs.move_to_end(key)
        return RateDecision(allowed=True, count=count + 1, retry_after=0)

    def _forget_expired(self, now: float) -> None:
        """Drop stale keys from the front; amortised O(1) per call."""
        while self._logs:
            key, log = next(iter(self._logs.items()))
            if log.times and log.times[-1] > now - log.window:
                return
            del self._logs[key]

    def _evict_over_cap(self) -> None:
        while len(self._logs) > self._max_keys:
            self._logs.popitem(last=False)
            self._evicted += 1
            if self._evicted == 1:
                logger.warning(
                    "rate limiter: more than %d keys tracked; evicting the stalest",
                    self._max_keys,
                )


# KEYS[1]: the sorted set of event times (ms) of one key.
# ARGV: limit, window (ms), record (1/0), a random member suffix.
# Server time, so every server process agrees on the window.
_SLIDING_WINDOW_LUA = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local record = ARGV[3] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  if record then
    redis.call('ZADD', key, now, now .. ':' .. ARGV[4])
    redis.call('PEXPIRE', key, window)
    count = count + 1
  end
  return {1, count, 0}
end
local blocking = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
local wait = tonumber(blocking[2]) + window - now
if record then
  count = count + 1
end
return {0, count, wait}
"""


class RedisRateLimiter:
    """A limiter shared by every server process, kept in Redis.

    Each key is a sorted set of event times under ``prefix``; one Lua script
    prunes, counts and records atomically, so concurrent calls from any number
    of processes are safe. Redis failures raise InfrastructureError.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tc:rl:",
        timeout: float = 2.0,
        client_name: str = "teleconsult-ratelimit",
    ) -> None:
        self._prefix = prefix
        # One immediate retry replaces a pooled connection the server closed.
        self._client = aioredis.Redis.from_url(
            url,
            client_name=client_name,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._script = self._client.register_script(_SLIDING_WINDOW_LUA)

    async def peek(self, key: str, limit: int, window: int) -> RateDecision:
        return await self._decide(key, limit, window, record=False)

    async def hit(self, key: str, limit: int, window: int) -> RateDecision:
        return await self._decide(key, limit, window, record=True)

    async def reset(self, key: str) -> None:
        try:
            await self._client.delete(self._prefix + key)
        except (RedisError, OSError) as exc:
            raise InfrastructureError(
                f"rate limiter reset failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def close(self) -> None:
        await self._client.aclose()

    async def _decide(self, key: str, limit: int, window: float, *, record: bool) -> RateDecision:
        _check_arguments(limit, window)
        window_ms = max(1, math.ceil(window * 1000))
        args = [limit, window_ms, 1 if record else 0, secrets.token_hex(8)]
        try:
            allowed, count, wait_ms = await self._script(keys=[self._prefix + key], args=args)
        except (RedisError, OSError) as exc:
            raise InfrastructureError(
                f"rate limiter check failed: {type(exc).__name__}: {exc}"
            ) from exc
        if allowed:
            return RateDecision(allowed=True, count=int(count), retry_after=0)
        return RateDecision(
            allowed=False, count=int(count), retry_after=_whole_seconds(int(wait_ms) / 1000)
        )


def create_rate_limiter(redis_url: str | None) -> RateLimiter:
    """A RedisRateLimiter when Redis is configured, else an InMemoryRateLimiter."""
    if redis_url:
        return RedisRateLimiter(redis_url)
    return InMemoryRateLimiter()
