"""Fan-out of opaque byte messages to handlers in one or many server processes.

Two implementations sit behind the small :class:`Bus` protocol:

* :class:`InProcessBus` for a single server process: ``publish`` hands the
  message straight to the local subscribers.
* :class:`RedisBus` for several processes: messages go through Redis pub/sub,
  so every process (the publisher's own included) sees every message.

Delivery is at most once. Each subscription has its own bounded queue and a
task that feeds its handler, so a slow handler neither blocks publishers nor
delays other subscribers; when its queue is full the oldest message is dropped
(and counted). Messages published while a :class:`RedisBus` is reconnecting
are lost, as with any Redis pub/sub client; ``on_resubscribed`` callbacks are
called once every channel is subscribed again, so their owners can make up for
it (the chat hub tells its connections to resume).

Neither bus is thread-safe: use it from the event loop that created it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from teleconsult.core.errors import InfrastructureError
from teleconsult.core.outages import OUTAGES
from teleconsult.core.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[None]]
# Called (synchronously, from the event loop) when the bus is subscribed again after
# losing its connection: whatever was published meanwhile never reached this process.
Resubscribed = Callable[[], None]

DEFAULT_QUEUE_SIZE = 1000
# A flood of drops must not become a flood of log lines: warn on the first drop
# of a subscription and then once per this many.
_DROP_LOG_EVERY = 100


class Subscription(Protocol):
    async def close(self) -> None: ...


class Bus(Protocol):
    @property
    def shared(self) -> bool:
        """Whether other server processes see what this bus carries (Redis) or not."""
        ...

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, channel: str, message: bytes) -> None: ...
    async def subscribe(self, channel: str, handler: Handler) -> Subscription: ...
    async def ping(self) -> bool: ...
    def on_resubscribed(self, callback: Resubscribed) -> None:
        """Call ``callback`` each time the bus is back after missing messages."""
        ...


class _Delivery:
    """One subscription: a bounded queue and the task that feeds its handler.

    ``offer`` never blocks, so the publisher (or the Redis listener) is never
    held up by a handler. Handler exceptions are logged and delivery goes on.
    """

    def __init__(
        self,
        channel: str,
        handler: Handler,
        *,
        queue_size: int,
        on_drop: Callable[[], None],
        on_close: Callable[[_Delivery], Awaitable[None]],
    ) -> None:
        self.channel = channel
        self.dropped = 0
        self._handler = handler
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self._on_drop = on_drop
        self._on_close = on_close
        self._closed = False
        self._task = asyncio.create_task(self._run(), name=f"tc-bus-delivery:{channel}")

    def offer(self, message: bytes) -> None:
        if self._closed:
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            self._on_drop()
            if self.dropped == 1 or self.dropped % _DROP_LOG_EVERY == 0:
                logger.warning(
                    "bus: subscriber on channel %s is too slow; dropped its oldest message "
                    "(%d dropped so far)",
                    self.channel,
                    self.dropped,
                )
        self._queue.put_nowait(message)

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._handler(message)
            except Exception:
                logger.exception("bus: handler for channel %s failed", self.channel)

    async def close(self) -> None:
        """Stop delivery to this handler; queued messages are discarded. Idempotent.

        May be called from the handler itself: the handler is then cancelled at
        its next ``await``.
        """
        if self._closed:
            return
        self._closed = True
        await self._on_close(self)
        await self._stop()

    async def shutdown(self) -> None:
        """Stop delivery without telling the bus (the bus is closing)."""
        self._closed = True
        await self._stop()

    async def _stop(self) -> None:
        if self._task is asyncio.current_task():
            self._task.cancel()
            return
        await cancel_and_wait([self._task])


class InProcessBus:
    """Delivers messages to subscribers in this process only.

    ``publish`` enqueues for every current subscriber of the channel before it
    returns and never waits for a handler. ``close`` must not run concurrently
    with the other methods.
    """

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._queue_size = queue_size
        self._channels: dict[str, set[_Delivery]] = {}
        self._dropped = 0
        self._closed = False

    @property
    def dropped_messages(self) -> int:
        """Messages dropped because a subscriber's queue was full, since creation."""
        return self._dropped

    @property
    def shared(self) -> bool:
        return False

    def on_resubscribed(self, callback: Resubscribed) -> None:
        """Never called: an in-process bus cannot lose its connection."""

    async def start(self) -> None:
        self._check_open()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        deliveries = [d for subscribers in self._channels.values() for d in subscribers]
        self._channels.clear()
        await asyncio.gather(*(d.shutdown() for d in deliveries))

    async def publish(self, channel: str, message: bytes) -> None:
        self._check_open()
        for delivery in tuple(self._channels.get(channel, ())):
            delivery.offer(message)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        self._check_open()
        delivery = _Delivery(
            channel,
            handler,
            queue_size=self._queue_size,
            on_drop=self._count_drop,
            on_close=self._remove,
        )
        self._channels.setdefault(channel, set()).add(delivery)
        return delivery

    async def ping(self) -> bool:
        return not self._closed

    def _count_drop(self) -> None:
        self._dropped += 1

    async def _remove(self, delivery: _Delivery) -> None:
        subscribers = self._channels.get(delivery.channel)
        if subscribers is None:
            return
        subscribers.discard(delivery)
        if not subscribers:
            del self._channels[delivery.channel]

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the bus is closed")


@dataclass
class _RedisChannel:
    """Local subscribers of one channel, and whether Redis confirmed the subscription."""

    deliveries: set[_Delivery] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class RedisBus:
    """Fan-out between server processes through Redis pub/sub.

    One connection publishes; one PubSub connection carries every subscription
    of this process, read by a single listener task that hands messages to the
    local subscribers' queues. When that connection fails, the listener
    reconnects with capped, fully jittered exponential backoff and subscribes
    again to every channel that still has a local subscriber.

    ``subscribe`` returns once Redis has confirmed the subscription, so a
    message published afterwards, from any process, is delivered. Channel names
    are opaque; in Redis they are prefixed with ``prefix``.

    Concurrency: ``publish``, ``subscribe``, ``ping`` and closing subscriptions
    may run concurrently with each other (commands on the PubSub connection are
    serialised by a lock). ``start`` and ``close`` must not run concurrently
    with anything else, and a closed bus cannot be started again.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tc:",
        client_name: str = "teleconsult-bus",
        queue_size: int = DEFAULT_QUEUE_SIZE,
        timeout: float = 5.0,
        ping_timeout: float = 2.0,
        idle_ping_interval: float = 30.0,
        backoff_base: float = 0.1,
        # Short: an idle reconnect attempt is cheap, and receivers wait for it.
        backoff_cap: float = 2.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._prefix = prefix
        self._queue_size = queue_size
        self._timeout = timeout
        self._ping_timeout = ping_timeout
        self._idle_ping_interval = idle_ping_interval
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        # Publishing may retry once at once: that replaces a pooled connection
        # the server has closed, without hiding an outage behind long retries.
        self._client = aioredis.Redis.from_url(
            url,
            client_name=f"{client_name}:pub",
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),
        )
        # The listener owns reconnection of the PubSub connection: redis-py must
        # never reconnect it behind our back, or it would come back unsubscribed.
        self._sub_client = aioredis.Redis.from_url(
            url,
            client_name=f"{client_name}:sub",
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0, supported_errors=()),
        )
        self._channels: dict[str, _RedisChannel] = {}
        self._pubsub: PubSub | None = None
        # Per channel, the SUBSCRIBE/UNSUBSCRIBE replies still due on the current
        # connection: a subscription is confirmed by the reply to the last one.
        self._replies_due: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._dropped = 0
        self._closed = False
        self._resubscribed: list[Resubscribed] = []
        # Set when the listener reconnected after a failure: the callbacks run once
        # every channel is confirmed again.
        self._resync_due = False

    @property
    def shared(self) -> bool:
        return True

    def on_resubscribed(self, callback: Resubscribed) -> None:
        self._resubscribed.append(callback)

    @property
    def dropped_messages(self) -> int:
        """Messages dropped because a subscriber's queue was full, since creation."""
        return self._dropped

    async def start(self) -> None:
        """Start the listener. It connects in the background; Redis may be down."""
        if self._closed:
            raise RuntimeError("the bus is closed")
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="tc-bus-redis-listener")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._listener is not None:
            await self._stop_listener(self._listener)
        await self._drop_connection()
        deliveries = [d for state in self._channels.values() for d in state.deliveries]
        self._channels.clear()
        await asyncio.gather(*(d.shutdown() for d in deliveries))
        await self._sub_client.aclose()
        await self._client.aclose()

    async def publish(self, channel: str, message: bytes) -> None:
        """Publish to every subscriber in every process; InfrastructureError on failure."""
        self._check_open()
        try:
            await self._client.publish(self._prefix + channel, message)
        except (RedisError, OSError) as exc:
            raise InfrastructureError(f"bus publish failed: {type(exc).__name__}: {exc}") from exc

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        """Subscribe ``handler``; InfrastructureError if Redis does not confirm in time."""
        self._check_open()
        if self._listener is None:
            raise RuntimeError("RedisBus.subscribe() before start()")
        delivery = _Delivery(
            channel,
            handler,
            queue_size=self._queue_size,
            on_drop=self._count_drop,
            on_close=self._remove,
        )
        state = self._channels.get(channel)
        # Register before any await so a concurrent close of the channel's last
        # other subscriber cannot unsubscribe it under us.
        is_new = state is None
        if state is None:
            state = self._channels[channel] = _RedisChannel()
        state.deliveries.add(delivery)
        try:
            async with asyncio.timeout(self._timeout):
                if is_new:
                    await self._send("SUBSCRIBE", channel)
                await state.confirmed.wait()
        except TimeoutError:
            await delivery.close()
            raise InfrastructureError(
                f"bus: Redis did not confirm the subscription to {channel!r}"
            ) from None
        except BaseException:
            await delivery.close()
            raise
        return delivery

    async def ping(self) -> bool:
        """True when Redis answers PING within ``ping_timeout``; never raises for Redis."""
        try:
            async with asyncio.timeout(self._ping_timeout):
                return bool(await self._client.ping())
        except (RedisError, OSError) as exc:
            logger.warning("bus: redis ping failed: %s", type(exc).__name__)
            return False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the bus is closed")

    def _count_drop(self) -> None:
        self._dropped += 1

    async def _remove(self, delivery: _Delivery) -> None:
        state = self._channels.get(delivery.channel)
        if state is None or delivery not in state.deliveries:
            return
        state.deliveries.discard(delivery)
        if not state.deliveries:
            del self._channels[delivery.channel]
            if not self._closed:
                await self._send("UNSUBSCRIBE", delivery.channel)

    async def _send(self, command: str, channel: str) -> None:
        """Send (UN)SUBSCRIBE on the listener's connection, if it is up.

        When it is down there is nothing to do: the listener subscribes to
        exactly the channels in ``_channels`` when it reconnects.
        """
        async with self._lock:
            pubsub = self._pubsub
            # Checked because redis-py would otherwise silently reconnect a
            # dropped connection here, and it would come back unsubscribed.
            if pubsub is None or pubsub.connection is None or not pubsub.connection.is_connected:
                return
            self._replies_due[channel] = self._replies_due.get(channel, 0) + 1
            try:
                await pubsub.execute_command(command, self._prefix + channel)
            except (RedisError, OSError) as exc:
                # The listener notices the broken connection on its next read.
                logger.warning("bus: %s failed: %s", command, type(exc).__name__)

    async def _stop_listener(self, task: asyncio.Task[None]) -> None:
        """Cancel the listener until it ends.

        redis-py's ``get_message(timeout=...)`` can swallow a cancellation that
        lands as its own timeout fires, leaving the task reading again; so
        cancel repeatedly and break its socket until the task has finished.
        """
        while not task.done():
            task.cancel()
            pubsub = self._pubsub
            if pubsub is not None and pubsub.connection is not None:
                with contextlib.suppress(Exception):
                    await pubsub.connection.disconnect(nowait=True)
            await asyncio.wait({task}, timeout=0.5)

    async def _listen(self) -> None:
        failures = 0
        while not self._closed:
            try:
                pubsub = await self._connect()
                if failures:
                    logger.debug("bus: reconnected to redis after %d failed attempt(s)", failures)
                    OUTAGES.up("redis")
                    self._resync_due = True
                    self._resync_if_confirmed()
                failures = 0
                await self._read(pubsub)
                return  # _read returns only once the bus is closed
            except (RedisError, OSError) as exc:
                failures += 1
                error = f"{type(exc).__name__}: {exc}"
                if failures == 1:
                    OUTAGES.down(RedisConnectionError(error))
            except Exception as exc:
                # A bug must not end fan-out for the life of the process.
                logger.exception("bus: redis listener failed unexpectedly")
                failures += 1
                error = type(exc).__name__
            await self._drop_connection()
            ceiling = min(self._backoff_cap, self._backoff_base * 2 ** min(failures - 1, 32))
            delay = random.uniform(0, ceiling)
            # One warning per outage (OUTAGES), the attempts only at debug level.
            logger.debug(
                "bus: redis listener connection failed (%s); retrying in %.2fs (attempt %d)",
                error,
                delay,
                failures,
            )
            await asyncio.sleep(delay)

    async def _connect(self) -> PubSub:
        """Open the PubSub connection and subscribe to every current channel."""
        pubsub = self._sub_client.pubsub()
        try:
            await pubsub.connect()
            async with self._lock:
                self._replies_due.clear()
                channels = list(self._channels)
                if channels:
                    self._replies_due.update(dict.fromkeys(channels, 1))
                    await pubsub.execute_command(
                        "SUBSCRIBE", *(self._prefix + channel for channel in channels)
                    )
                self._pubsub = pubsub
        except BaseException:
            # Bounded: a connect cancelled half-way can leave redis-py's close
            # waiting forever on the connection it was opening.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await pubsub.aclose()
            raise
        return pubsub

    async def _read(self, pubsub: PubSub) -> None:
        """Dispatch messages until the connection fails (raises) or the bus closes.

        An idle connection is probed with PING, so a silently dead one (a
        half-open TCP connection) is noticed and replaced too.
        """
        ping_sent = False
        while not self._closed:
            connection = pubsub.connection
            if connection is None or not connection.is_connected:
                raise RedisConnectionError("pubsub connection lost")
            message = await pubsub.get_message(timeout=self._idle_ping_interval)
            if message is None:
                if ping_sent:
                    raise RedisConnectionError("no reply to PING on the pubsub connection")
                async with self._lock:
                    await pubsub.execute_command("PING")
                ping_sent = True
                continue
            ping_sent = False
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        raw_channel = message["channel"]
        if not isinstance(raw_channel, bytes):
            return  # a PING reply
        name = raw_channel.decode("utf-8", errors="replace")
        if not name.startswith(self._prefix):
            return
        channel = name[len(self._prefix) :]
        if kind == "message":
            state = self._channels.get(channel)
            if state is not None:
                for delivery in tuple(state.deliveries):
                    delivery.offer(message["data"])
        elif kind in ("subscribe", "unsubscribe"):
            due = self._replies_due.get(channel, 0) - 1
            if due > 0:
                self._replies_due[channel] = due
                return
            self._replies_due.pop(channel, None)
            state = self._channels.get(channel)
            if kind == "subscribe" and state is not None:
                state.confirmed.set()
                self._resync_if_confirmed()

    def _resync_if_confirmed(self) -> None:
        if not self._resync_due or self._replies_due:
            return
        if not all(state.confirmed.is_set() for state in self._channels.values()):
            return
        self._resync_due = False
        for callback in self._resubscribed:
            try:
                callback()
            except Exception:
                logger.exception("bus: a resubscription callback failed")

    async def _drop_connection(self) -> None:
        async with self._lock:
            pubsub, self._pubsub = self._pubsub, None
            self._replies_due.clear()
            for state in self._channels.values():
                state.confirmed.clear()
        if pubsub is not None:
            await pubsub.aclose()


def create_bus(redis_url: str | None) -> Bus:
    """A RedisBus when Redis is configured, else an InProcessBus (one process only).

    The bus is not started: the caller's lifetime management calls ``start`` and ``close``.
    """
    if redis_url:
        return RedisBus(redis_url)
    return InProcessBus()
