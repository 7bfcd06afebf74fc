"""Sliding-window rate limiting, in memory (fake clock) and in real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from teleconsult.core.errors import InfrastructureError
from teleconsult.core.ratelimit import (
    InMemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    create_rate_limiter,
)
from tests.dbutil import REDIS_URL

UNREACHABLE_URL = "redis://127.0.0.1:1/0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unique_key() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["in-memory", "redis"])
async def limiter(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[RateLimiter]:
    instance: RateLimiter
    if request.param == "redis":
        instance = RedisRateLimiter(REDIS_URL)
    else:
        instance = InMemoryRateLimiter(clock=clock)
    yield instance
    await instance.close()


@pytest.fixture
async def key(limiter: RateLimiter) -> AsyncIterator[str]:
    """A key no other test uses, deleted afterwards."""
    name = unique_key()
    yield name
    await limiter.reset(name)


@pytest.fixture
async def redis_limiter() -> AsyncIterator[RedisRateLimiter]:
    instance = RedisRateLimiter(REDIS_URL)
    yield instance
    await instance.close()


@pytest.fixture
async def redis_key(redis_limiter: RedisRateLimiter) -> AsyncIterator[str]:
    name = unique_key()
    yield name
    await redis_limiter.reset(name)


async def test_allows_up_to_the_limit_then_refuses(limiter: RateLimiter, key: str) -> None:
    decisions = [await limiter.hit(key, limit=3, window=60) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.count for d in decisions] == [1, 2, 3, 4]


async def test_refusal_says_when_to_retry(limiter: RateLimiter, key: str) -> None:
    await limiter.hit(key, limit=1, window=60)

    decision = await limiter.hit(key, limit=1, window=60)

    assert not decision.allowed
    assert 0 < decision.retry_after <= 60


async def test_allowed_hit_has_no_retry_after(limiter: RateLimiter, key: str) -> None:
    decision = await limiter.hit(key, limit=2, window=60)

    assert decision.retry_after == 0


async def test_peek_records_nothing(limiter: RateLimiter, key: str) -> None:
    for _ in range(5):
        decision = await limiter.peek(key, limit=2, window=60)
        assert decision.allowed
        assert decision.count == 0

    assert (await limiter.hit(key, limit=2, window=60)).count == 1


async def test_peek_refuses_once_the_limit_is_reached(limiter: RateLimiter, key: str) -> None:
    await limiter.hit(key, limit=2, window=60)
    await limiter.hit(key, limit=2, window=60)

    decision = await limiter.peek(key, limit=2, window=60)

    assert not decision.allowed
    assert decision.count == 2
    assert decision.retry_after > 0


async def test_refused_hit_is_not_recorded(limiter: RateLimiter, key: str) -> None:
    for _ in range(5):
        await limiter.hit(key, limit=2, window=60)

    assert (await limiter.peek(key, limit=2, window=60)).count == 2


async def test_reset_clears_the_key(limiter: RateLimiter, key: str) -> None:
    await limiter.hit(key, limit=1, window=60)

    await limiter.reset(key)

    decision = await limiter.hit(key, limit=1, window=60)
    assert decision.allowed
    assert decision.count == 1


async def test_keys_are_counted_separately(limiter: RateLimiter, key: str) -> None:
    other = f"{key}:other"
    try:
        await limiter.hit(key, limit=1, window=60)

        assert (await limiter.hit(other, limit=1, window=60)).allowed
    finally:
        await limiter.reset(other)


@pytest.mark.parametrize(("limit", "window"), [(0, 60), (1, 0)])
async def test_non_positive_limit_or_window_is_rejected(
    limiter: RateLimiter, key: str, limit: int, window: int
) -> None:
    with pytest.raises(ValueError):
        await limiter.hit(key, limit=limit, window=window)


async def test_in_memory_event_stops_counting_window_seconds_after_it_happened(
    clock: FakeClock,
) -> None:
    limiter = InMemoryRateLimiter(clock=clock)
    await limiter.hit("k", limit=1, window=10)

    clock.advance(9.5)
    assert not (await limiter.peek("k", limit=1, window=10)).allowed
    clock.advance(0.5)
    assert (await limiter.peek("k", limit=1, window=10)).allowed


async def test_in_memory_window_slides_event_by_event(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock=clock)
    await limiter.hit("k", limit=2, window=10)  # t=0
    clock.advance(6)
    await limiter.hit("k", limit=2, window=10)  # t=6

    clock.advance(2)  # t=8: both count; the one from t=0 frees a slot at t=10
    refused = await limiter.hit("k", limit=2, window=10)
    clock.advance(2)  # t=10
    allowed = await limiter.hit("k", limit=2, window=10)
    clock.advance(2)  # t=12: the events of t=6 and t=10 count; t=6 frees a slot at t=16
    refused_again = await limiter.hit("k", limit=2, window=10)

    assert (refused.allowed, refused.retry_after) == (False, 2)
    assert (allowed.allowed, allowed.count) == (True, 2)
    assert (refused_again.allowed, refused_again.retry_after) == (False, 4)


async def test_in_memory_forgets_keys_whose_events_expired(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock=clock)
    await limiter.hit("old", limit=5, window=10)
    clock.advance(11)

    await limiter.hit("new", limit=5, window=10)

    assert limiter.tracked_keys == 1


async def test_in_memory_key_cap_evicts_the_stalest_key(clock: FakeClock) -> None:
    limiter = InMemoryRateLimiter(clock=clock, max_keys=2)
    for name in ("a", "b"):
        await limiter.hit(name, limit=5, window=60)
        clock.advance(1)
    await limiter.hit("a", limit=5, window=60)  # "b" is now the stalest
    clock.advance(1)

    await limiter.hit("c", limit=5, window=60)

    assert limiter.tracked_keys == 2
    assert limiter.evicted_keys == 1
    assert (await limiter.peek("b", limit=5, window=60)).count == 0
    assert (await limiter.peek("a", limit=5, window=60)).count == 2
    assert (await limiter.peek("c", limit=5, window=60)).count == 1


async def test_redis_events_expire_after_the_window(
    redis_limiter: RedisRateLimiter, redis_key: str
) -> None:
    await redis_limiter.hit(redis_key, limit=1, window=1)
    assert not (await redis_limiter.hit(redis_key, limit=1, window=1)).allowed

    await asyncio.sleep(1.2)

    assert (await redis_limiter.hit(redis_key, limit=1, window=1)).allowed


async def test_two_redis_limiters_share_counts(
    redis_limiter: RedisRateLimiter, redis_key: str
) -> None:
    other_process = RedisRateLimiter(REDIS_URL)
    try:
        await redis_limiter.hit(redis_key, limit=2, window=60)
        await other_process.hit(redis_key, limit=2, window=60)

        decision = await redis_limiter.hit(redis_key, limit=2, window=60)
    finally:
        await other_process.close()

    assert not decision.allowed
    assert decision.count == 3


async def test_redis_key_is_prefixed_and_expires_with_the_window(
    redis_limiter: RedisRateLimiter, redis_key: str
) -> None:
    await redis_limiter.hit(redis_key, limit=5, window=30)

    raw = aioredis.Redis.from_url(REDIS_URL)
    try:
        ttl_ms = await raw.pttl(f"tc:rl:{redis_key}")
    finally:
        await raw.aclose()

    assert 0 < ttl_ms <= 30_000


async def test_redis_concurrent_hits_never_exceed_the_limit(
    redis_limiter: RedisRateLimiter, redis_key: str
) -> None:
    decisions = await asyncio.gather(
        *(redis_limiter.hit(redis_key, limit=5, window=60) for _ in range(20))
    )

    assert sum(d.allowed for d in decisions) == 5


async def test_redis_unreachable_raises_infrastructure_error() -> None:
    limiter = RedisRateLimiter(UNREACHABLE_URL)
    try:
        with pytest.raises(InfrastructureError):
            await limiter.hit(unique_key(), limit=1, window=60)
    finally:
        await limiter.close()


async def test_create_rate_limiter_without_redis_url_is_in_memory() -> None:
    limiter = create_rate_limiter(None)
    try:
        assert isinstance(limiter, InMemoryRateLimiter)
    finally:
        await limiter.close()


async def test_create_rate_limiter_with_redis_url_uses_redis() -> None:
    limiter = create_rate_limiter(REDIS_URL)
    try:
        assert isinstance(limiter, RedisRateLimiter)
    finally:
        await limiter.close()
