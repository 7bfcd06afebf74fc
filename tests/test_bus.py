"""The bus: fan-out to local subscribers, and between processes through real Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from teleconsult.core.bus import Bus, InProcessBus, RedisBus, create_bus
from teleconsult.core.errors import InfrastructureError
from tests.dbutil import REDIS_URL

UNREACHABLE_URL = "redis://127.0.0.1:1/0"
BUS_KINDS = ["in-process", "redis"]


def unique(what: str = "channel") -> str:
    return f"test:{what}:{uuid.uuid4().hex}"


async def eventually(predicate: Callable[[], bool], *, within: float = 5.0) -> None:
    """Wait until ``predicate()`` holds; fail the test if it does not within ``within`` s."""
    try:
        async with asyncio.timeout(within):
            # Polling on purpose: the conditions are plain state with no event to wait on.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"condition not met within {within}s")


async def let_loop_run() -> None:
    """Give queued delivery tasks a chance to run."""
    for _ in range(20):
        await asyncio.sleep(0)


class Recorder:
    """A handler that remembers what it received."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def __call__(self, message: bytes) -> None:
        self.messages.append(message)


@pytest.fixture
async def redis_admin() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def make_bus() -> AsyncIterator[Callable[..., Any]]:
    """Build started buses of either kind; all are closed after the test."""
    created: list[Bus] = []

    async def make(kind: str, **options: Any) -> Bus:
        instance: Bus
        if kind == "redis":
            instance = RedisBus(options.pop("url", REDIS_URL), **options)
        else:
            instance = InProcessBus(**options)
        created.append(instance)
        await instance.start()
        return instance

    yield make
    for instance in created:
        await instance.close()


@pytest.fixture(params=BUS_KINDS)
async def bus(request: pytest.FixtureRequest, make_bus: Callable[..., Any]) -> Bus:
    instance: Bus = await make_bus(request.param)
    return instance


async def test_publish_reaches_every_subscriber_of_the_channel(bus: Bus) -> None:
    channel = unique()
    first, second = Recorder(), Recorder()
    await bus.subscribe(channel, first)
    await bus.subscribe(channel, second)

    await bus.publish(channel, b"hello")

    await eventually(lambda: bool(first.messages and second.messages))
    assert first.messages == [b"hello"]
    assert second.messages == [b"hello"]


async def test_publish_does_not_reach_other_channels(bus: Bus) -> None:
    channel, other = unique(), unique()
    on_channel, on_other = Recorder(), Recorder()
    await bus.subscribe(channel, on_channel)
    await bus.subscribe(other, on_other)

    await bus.publish(channel, b"for-channel")
    # Published after, so a misrouted message would have reached on_other first.
    await bus.publish(other, b"sentinel")

    await eventually(lambda: bool(on_channel.messages and on_other.messages))
    assert on_other.messages == [b"sentinel"]


async def test_messages_arrive_in_publish_order(bus: Bus) -> None:
    channel = unique()
    received = Recorder()
    await bus.subscribe(channel, received)
    sent = [f"m{i}".encode() for i in range(50)]

    for message in sent:
        await bus.publish(channel, message)

    await eventually(lambda: len(received.messages) == len(sent))
    assert received.messages == sent


async def test_closed_subscription_receives_no_more_messages(bus: Bus) -> None:
    channel = unique()
    closed, witness = Recorder(), Recorder()
    subscription = await bus.subscribe(channel, closed)
    await bus.subscribe(channel, witness)
    await bus.publish(channel, b"before")
    await eventually(lambda: bool(closed.messages and witness.messages))

    await subscription.close()
    await bus.publish(channel, b"after")

    await eventually(lambda: len(witness.messages) == 2)
    await let_loop_run()
    assert closed.messages == [b"before"]


async def test_handler_can_close_its_own_subscription(bus: Bus) -> None:
    channel = unique()
    received: list[bytes] = []
    witness = Recorder()
    subscriptions: list[Any] = []

    async def close_after_first(message: bytes) -> None:
        received.append(message)
        await subscriptions[0].close()

    subscriptions.append(await bus.subscribe(channel, close_after_first))
    await bus.subscribe(channel, witness)
    await bus.publish(channel, b"first")
    await eventually(lambda: bool(received))

    await bus.publish(channel, b"second")

    await eventually(lambda: len(witness.messages) == 2)
    await let_loop_run()
    assert received == [b"first"]


async def test_raising_handler_does_not_stop_later_deliveries(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    channel = unique()
    received: list[bytes] = []

    async def fragile(message: bytes) -> None:
        if message == b"boom":
            raise RuntimeError("handler bug")
        received.append(message)

    await bus.subscribe(channel, fragile)
    with caplog.at_level(logging.ERROR, logger="teleconsult.core.bus"):
        await bus.publish(channel, b"boom")
        await bus.publish(channel, b"fine")
        await eventually(lambda: bool(received))

    assert received == [b"fine"]
    assert any("handler for channel" in record.getMessage() for record in caplog.records)


async def test_slow_handler_does_not_delay_other_subscribers(bus: Bus) -> None:
    channel = unique()
    release = asyncio.Event()
    fast = Recorder()

    async def stuck(message: bytes) -> None:
        await release.wait()

    await bus.subscribe(channel, stuck)
    await bus.subscribe(channel, fast)
    try:
        for i in range(3):
            await bus.publish(channel, f"m{i}".encode())
        await eventually(lambda: len(fast.messages) == 3)
    finally:
        release.set()


@pytest.mark.parametrize("kind", BUS_KINDS)
async def test_full_queue_drops_the_oldest_message_and_counts_it(
    kind: str, make_bus: Callable[..., Any]
) -> None:
    bus: InProcessBus | RedisBus = await make_bus(kind, queue_size=2)
    channel = unique()
    started, release = asyncio.Event(), asyncio.Event()
    received: list[bytes] = []

    async def slow(message: bytes) -> None:
        started.set()
        await release.wait()
        received.append(message)

    await bus.subscribe(channel, slow)
    await bus.publish(channel, b"m0")
    await eventually(started.is_set)  # m0 is in the handler, the queue is empty
    for i in range(1, 5):
        await bus.publish(channel, f"m{i}".encode())
    await eventually(lambda: bus.dropped_messages == 2)

    release.set()

    await eventually(lambda: len(received) == 3)
    assert received == [b"m0", b"m3", b"m4"]


async def test_ping_is_true_while_the_server_is_up(bus: Bus) -> None:
    assert await bus.ping() is True


@pytest.mark.parametrize("kind", BUS_KINDS)
async def test_close_ends_every_background_task(kind: str, make_bus: Callable[..., Any]) -> None:
    bus: Bus = await make_bus(kind)
    await bus.subscribe(unique(), Recorder())
    await bus.subscribe(unique(), Recorder())

    await bus.close()

    leftovers = [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("tc-bus") and not task.done()
    ]
    assert leftovers == []


async def test_two_redis_buses_see_each_others_messages(make_bus: Callable[..., Any]) -> None:
    first: Bus = await make_bus("redis")
    second: Bus = await make_bus("redis")
    channel = unique()
    on_first, on_second = Recorder(), Recorder()
    await first.subscribe(channel, on_first)
    await second.subscribe(channel, on_second)

    await first.publish(channel, b"from-first")
    await second.publish(channel, b"from-second")

    await eventually(lambda: len(on_first.messages) == 2 and len(on_second.messages) == 2)
    assert on_first.messages == on_second.messages == [b"from-first", b"from-second"]


async def test_redis_bus_prefixes_channel_names_in_redis(
    make_bus: Callable[..., Any], redis_admin: aioredis.Redis
) -> None:
    bus: Bus = await make_bus("redis", prefix="tc:")
    channel = unique()
    received = Recorder()
    await bus.subscribe(channel, received)

    await redis_admin.publish(f"tc:{channel}", b"raw")

    await eventually(lambda: received.messages == [b"raw"])


async def _listener_client_ids(admin: aioredis.Redis, name: str) -> list[str]:
    clients: list[dict[str, Any]] = await admin.client_list()
    return [str(client["id"]) for client in clients if client.get("name") == name]


async def test_redis_bus_recovers_after_its_listener_connection_is_killed(
    make_bus: Callable[..., Any], redis_admin: aioredis.Redis
) -> None:
    client_name = unique("bus-client").replace(":", "-")
    bus: Bus = await make_bus("redis", client_name=client_name, backoff_cap=0.5)
    channel = unique()
    received = Recorder()
    await bus.subscribe(channel, received)
    [killed_id] = await _listener_client_ids(redis_admin, f"{client_name}:sub")

    await redis_admin.client_kill_filter(_id=killed_id)

    # Pub/sub is at most once: what is published while the listener reconnects
    # is lost, so keep publishing until a message gets through.
    try:
        async with asyncio.timeout(10):
            while not received.messages:
                await bus.publish(channel, b"after-kill")
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail("no message delivered after the listener connection was killed")
    assert received.messages[0] == b"after-kill"
    assert killed_id not in await _listener_client_ids(redis_admin, f"{client_name}:sub")


async def test_redis_bus_keeps_an_idle_listener_connection(
    make_bus: Callable[..., Any], redis_admin: aioredis.Redis
) -> None:
    client_name = unique("bus-client").replace(":", "-")
    bus: Bus = await make_bus("redis", client_name=client_name, idle_ping_interval=0.05)
    listener_ids: list[str] = []

    async def connected() -> None:
        while not listener_ids:
            listener_ids.extend(await _listener_client_ids(redis_admin, f"{client_name}:sub"))
            await asyncio.sleep(0.01)

    async with asyncio.timeout(5):
        await connected()
    await asyncio.sleep(0.3)  # idle, unsubscribed: PINGs are answered
    channel = unique()
    received = Recorder()
    await bus.subscribe(channel, received)
    await asyncio.sleep(0.3)  # idle, subscribed: PINGs are answered in pub/sub mode

    await bus.publish(channel, b"still-here")

    await eventually(lambda: received.messages == [b"still-here"])
    assert await _listener_client_ids(redis_admin, f"{client_name}:sub") == listener_ids


async def test_redis_ping_is_false_when_the_server_is_unreachable(
    make_bus: Callable[..., Any],
) -> None:
    bus: Bus = await make_bus("redis", url=UNREACHABLE_URL)

    async with asyncio.timeout(5):
        assert await bus.ping() is False


async def test_redis_publish_raises_infrastructure_error_when_unreachable(
    make_bus: Callable[..., Any],
) -> None:
    bus: Bus = await make_bus("redis", url=UNREACHABLE_URL)

    with pytest.raises(InfrastructureError):
        await bus.publish(unique(), b"lost")


async def test_redis_subscribe_raises_infrastructure_error_when_unreachable(
    make_bus: Callable[..., Any],
) -> None:
    bus: Bus = await make_bus("redis", url=UNREACHABLE_URL, timeout=0.3)

    with pytest.raises(InfrastructureError):
        await bus.subscribe(unique(), Recorder())


async def test_create_bus_without_redis_url_is_in_process() -> None:
    bus = create_bus(None)
    try:
        assert isinstance(bus, InProcessBus)
    finally:
        await bus.close()


async def test_create_bus_with_redis_url_uses_redis() -> None:
    bus = create_bus(REDIS_URL)
    try:
        assert isinstance(bus, RedisBus)
    finally:
        await bus.close()
