"""The MQTT transport, server side: a bridge between a broker and :class:`ChatService`.

One aiomqtt client per server process subscribes to every user's request
topic (``mqtt_wire``), runs each request through ``ChatService.handle`` as the
user the topic names, and publishes the ack to that user's ``ack`` topic. A
message sink publishes each stored message to every member's ``inbox``, once,
from the process that stored it.

Who may use a topic is the broker's job (docs/mqtt.md); the server trusts the
topic for the user, loads the user's role and clinic itself (a disabled user
is refused), and the messaging service checks every envelope against that
user: a device of someone else's is refused.

With several server processes, an MQTT 5 shared subscription hands each
request to one of them; ``send`` is idempotent by client message id anyway, so
a redelivered request stores nothing new. The bridge's session is clean: a
request published while no bridge is connected is lost and the client, which
got no ack, sends it again.

Requests of one user are handled one after another in arrival order (so one
sender's messages are stored in the order sent); different users run
concurrently, at most ``MAX_CONCURRENT`` at a time.

Presence: the bridge cannot see devices connect through a broker, so devices
say so. ``online`` records (or renews) the presence entry ``mqtt:<conn>`` of
the topic's user, which lapses after ``CHAT_PRESENCE_TTL`` unless renewed;
``offline`` (sent before a clean disconnect, and by the broker as the Last Will
of a connection that died) removes it. Both go through ChatService, which
tells co-members when the user comes online or goes offline. Per-user order
keeps a will behind the ``online`` of the same connection (in one process; with
several, a late ``online`` outlives the will by at most the TTL); each
connection has its own ``conn``, so the will of an old connection never
removes a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

from teleconsult.core.backoff import Backoff
from teleconsult.core.errors import ClientError, ConfigError, InfrastructureError, Unavailable
from teleconsult.core.identity import Principal
from teleconsult.core.settings import ChatSettings, MqttSettings
from teleconsult.messaging import mqtt_wire, wire
from teleconsult.messaging.chat import ChatService
from teleconsult.messaging.records import StoredMessage
from teleconsult.realtime import acks
from teleconsult.realtime.limits import TokenBucket, rate_limited

logger = logging.getLogger(__name__)

# Resolves the user a request topic names; raises ClientError when they may not chat.
PrincipalSource = Callable[[UUID], Awaitable[Principal]]

MAX_CONCURRENT = 64
MAX_PENDING_PUBLISHES = 10_000
PRINCIPAL_TTL = 30.0  # a disabled account is refused within this many seconds
_MAX_CACHED_USERS = 10_000
CONN_PREFIX = "mqtt:"  # presence entries of MQTT connections, apart from Socket.IO sids


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """``mqtt://user:password@host:port`` (``mqtts`` for TLS)."""
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )


class MqttBridge:
    """``start`` then ``close``; ``ready`` is set while subscribed to requests."""

    def __init__(
        self,
        *,
        chat: ChatService,
        principals: PrincipalSource,
        broker: BrokerAddress,
        shared_group: str = "",
        settings: ChatSettings,
    ) -> None:
        self._chat = chat
        self._principals = principals
        self._broker = broker
        self._filter = mqtt_wire.request_filter(shared_group)
        self._protocol = (
            aiomqtt.ProtocolVersion.V5 if shared_group else aiomqtt.ProtocolVersion.V311
        )
        self._settings = settings
        self.ready = asyncio.Event()
        self.handled = 0  # requests answered by this process (metrics, tests)
        self._client: aiomqtt.Client | None = None
        self._runner: asyncio.Task[None] | None = None
        self._queues: dict[UUID, asyncio.Queue[mqtt_wire.Request]] = {}
        self._buckets: dict[UUID, TokenBucket] = {}
        self._cached: dict[UUID, tuple[Principal, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers = asyncio.Semaphore(MAX_CONCURRENT)
        chat.add_sink(self.deliver)

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="mqtt-bridge")

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- the connection ---------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(first=0.2, most=15.0)
        while True:
            try:
                async with self._connect() as client:
                    codes = await client.subscribe(self._filter, qos=1)
                    if refused(codes):
                        logger.error("the MQTT broker refused the subscription %s", self._filter)
                    else:
                        self._client = client
                        self.ready.set()
                        backoff.reset()
                        logger.info("MQTT bridge subscribed to %s", self._filter)
                        async for message in client.messages:
                            try:
                                self._take(message)
                            except Exception:
                                logger.exception("an MQTT request could not be taken")
            except aiomqtt.MqttError as exc:
                logger.warning("MQTT bridge lost the broker (%s); reconnecting", exc)
            except Exception:
                logger.exception("the MQTT bridge failed; reconnecting")
            finally:
                self._client = None
                self.ready.clear()
            await asyncio.sleep(backoff.delay())

    def _connect(self) -> aiomqtt.Client:
        b = self._broker
        return aiomqtt.Client(
            b.host,
            b.port,
            username=b.username,
            password=b.password,
            identifier=f"tc-bridge-{secrets.token_hex(6)}",
            protocol=self._protocol,
            clean_session=True if self._protocol is aiomqtt.ProtocolVersion.V311 else None,
            tls_context=ssl.create_default_context() if b.tls else None,
            max_queued_incoming_messages=MAX_PENDING_PUBLISHES,
            logger=logger,
            # Acks and pushes are small writes back to back: without this,
            # Nagle holds each behind the peer's delayed ACK (44 ms vs 9 ms p50,
            # bench/mqtt_path.py).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    # --- requests ---------------------------------------------------------------------

    def _take(self, message: aiomqtt.Message) -> None:
        """Check a request as it arrives; queue it behind the same user's earlier ones."""
        user_id = mqtt_wire.user_of(str(message.topic), "req")
        payload = message.payload
        # A retained request is an old one replayed on subscribing (a stale
        # ``online`` would make a gone user look present): never run it.
        if user_id is None or message.retain or not isinstance(payload, bytes | bytearray):
            logger.debug("dropped an MQTT message on %s", message.topic)
            return
        wait = self._bucket(user_id).take()
        try:
            request = mqtt_wire.parse_request(
                bytes(payload), max_bytes=self._settings.max_frame_bytes
            )
        except mqtt_wire.RequestRefused as exc:
            if not wait:  # past the limit, garbage gets no answer at all
                self._answer(user_id, exc.request_id, acks.error_ack(exc.error), exc.encoding)
            return
        if wait:
            self._answer(user_id, request.id, acks.error_ack(rate_limited(wait)), request.encoding)
            return
        queue = self._queues.get(user_id)
        if queue is None:
            queue = self._queues[user_id] = asyncio.Queue(self._settings.max_queued_events)
            self._spawn(self._serve(user_id, queue))
        try:
            queue.put_nowait(request)
        except asyncio.QueueFull:
            ack = acks.error_ack(rate_limited(1.0))
            self._answer(user_id, request.id, ack, request.encoding)

    async def _serve(self, user_id: UUID, queue: asyncio.Queue[mqtt_wire.Request]) -> None:
        try:
            while not queue.empty():
                request = queue.get_nowait()
                async with self._handlers:
                    ack = await self._handle(user_id, request)
                self._answer(user_id, request.id, ack, request.encoding)
        finally:
            if self._queues.get(user_id) is queue:
                del self._queues[user_id]

    async def _handle(self, user_id: UUID, request: mqtt_wire.Request) -> dict[str, Any]:
        try:
            principal = await self._principal(user_id)
        except ClientError as exc:
            return acks.error_ack(exc)
        except Exception:
            logger.exception("could not load the user of an MQTT request")
            return acks.internal_error_ack()
        if request.event in mqtt_wire.LINK_EVENTS:
            return await self._link(principal.user_id, request)
        return await self._chat.handle(principal, request.event, request.data)

    async def _link(self, user_id: UUID, request: mqtt_wire.Request) -> dict[str, Any]:
        """``online``/``offline``: one of the user's own connections, by the id it chose."""
        try:
            conn_id = CONN_PREFIX + acks.parse(mqtt_wire.LinkRequest, request.data).conn
            if request.event == mqtt_wire.OFFLINE:
                await self._chat.device_offline(user_id, conn_id)
                return acks.ok()
            await self._chat.device_online(user_id, conn_id)
            return acks.ok(renew_in=self._settings.presence_ttl / 3)
        except ClientError as exc:
            return acks.error_ack(exc)
        except InfrastructureError:
            logger.warning("presence could not record an MQTT connection", exc_info=True)
            unavailable = Unavailable("presence is unavailable", headers={"Retry-After": "5"})
            return acks.error_ack(unavailable)

    async def _principal(self, user_id: UUID) -> Principal:
        now = time.monotonic()
        cached = self._cached.get(user_id)
        if cached is not None and now - cached[1] < PRINCIPAL_TTL:
            return cached[0]
        if len(self._cached) >= _MAX_CACHED_USERS:
            self._cached.clear()
        principal = await self._principals(user_id)
        self._cached[user_id] = (principal, now)
        return principal

    def _bucket(self, user_id: UUID) -> TokenBucket:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            if len(self._buckets) >= _MAX_CACHED_USERS:
                self._buckets.clear()
            s = self._settings
            bucket = self._buckets[user_id] = TokenBucket(s.events_per_second, s.event_burst)
        return bucket

    def _answer(
        self,
        user_id: UUID,
        request_id: str | None,
        ack: dict[str, Any],
        encoding: wire.Encoding,
    ) -> None:
        self.handled += 1
        payload = mqtt_wire.encode_ack(request_id, ack, encoding)
        self._publish(mqtt_wire.ack_topic(user_id), payload)

    # --- publishing -------------------------------------------------------------------

    async def deliver(self, stored: StoredMessage, member_ids: list[UUID]) -> None:
        """The message sink: push a stored message to every member's inbox."""
        payload = mqtt_wire.encode_event("message", wire.message_data(stored))
        for member in member_ids:
            self._publish(mqtt_wire.inbox_topic(member), payload)

    def _publish(self, topic: str, payload: bytes) -> None:
        """Publish in the background, in call order; dropped when the broker is away."""
        client = self._client
        if client is None or len(self._tasks) >= MAX_PENDING_PUBLISHES:
            logger.warning("dropped an MQTT publish: the broker is not connected or is slow")
            return
        # The PUBLISH is queued in paho before the task's first await, so
        # publishes go out in the order of these calls.
        self._spawn(self._publish_one(client, topic, payload))

    async def _publish_one(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        try:
            await client.publish(topic, payload, qos=1)
        except aiomqtt.MqttError as exc:
            logger.warning("an MQTT publish failed: %s", exc)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def refused(codes: Sequence[int | ReasonCode]) -> bool:
    """Whether a SUBACK refused any of the topics (MQTT 3.1.1 0x80, or an MQTT 5 reason)."""
    return any(code.is_failure if isinstance(code, ReasonCode) else code >= 0x80 for code in codes)


@contextlib.asynccontextmanager
async def mqtt_transport(
    settings: MqttSettings,
    *,
    chat: ChatService,
    principals: PrincipalSource,
    authenticate: Callable[[str], Awaitable[Principal]],
) -> AsyncIterator[MqttBridge | None]:
    """The bridge, and the embedded broker first when no external one is configured."""
    if not settings.enabled:
        yield None
        return
    async with contextlib.AsyncExitStack() as stack:
        if settings.url is not None:
            address, group = BrokerAddress.from_url(settings.url), settings.shared_group
        else:
            # amqtt is an optional dependency (the "embedded" extra).
            from teleconsult.messaging.mqtt_broker import BrokerAccess, EmbeddedBroker

            assert settings.embedded_port is not None
            access = BrokerAccess(authenticate)
            broker = EmbeddedBroker(settings.embedded_host, settings.embedded_port, access)
            try:
                await broker.start()
            except ConfigError as exc:
                if settings.embedded_port_required:
                    raise
                logger.warning(
                    "MQTT transport off: the embedded broker could not start (%s). "
                    "Set MQTT_EMBEDDED_PORT to a free port, or MQTT_URL to a broker.",
                    exc,
                )
                yield None
                return
            stack.push_async_callback(broker.close)
            host = "127.0.0.1" if settings.embedded_host in ("0.0.0.0", "::", "") else None
            address = BrokerAddress(
                host=host or settings.embedded_host,
                port=settings.embedded_port,
                username=access.bridge_username,
                password=access.bridge_password,
            )
            group = ""  # amqtt has no shared subscriptions
        bridge = MqttBridge(
            chat=chat,
            principals=principals,
            broker=address,
            shared_group=group,
            settings=chat.settings,
        )
        await bridge.start()
        stack.push_async_callback(bridge.close)
        yield bridge
