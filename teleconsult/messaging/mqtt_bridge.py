"""The MQTT transport, server side: a bridge between a broker and :class:`ChatService`.

One aiomqtt client per server process subscribes to every user's request
topic (``mqtt_wire``), runs each request through ``ChatService.handle`` as the
user the topic names, and publishes the ack to that user's ``ack`` topic. A
message sink publishes each stored message to every member's ``inbox``, once,
from the process that stored it.

Who may use a topic is the broker's job (docs/mqtt.md), but the bridge does
not rest on it: each request carries its device's Ed25519 signature over the
topic's user id and the request frame (``mqtt_wire.signing_bytes``), and the
bridge checks it against the device's registered key before running anything
(``_authentic``). A request without one, from a device that is not the topic
user's (or revoked), with a bad signature or a timestamp outside
``MQTT_SIGNATURE_WINDOW`` is dropped unanswered and counted (``dropped``, the
metric ``teleconsult_mqtt_requests_dropped_total``). The bridge then loads the
user's role and clinic itself (a disabled user is refused), and the messaging
service checks every envelope against that user.

With several server processes, an MQTT 5 shared subscription hands each
request to one of them; ``send`` is idempotent by client message id anyway, so
a redelivered request stores nothing new. The bridge's session is clean: a
request published while no bridge is subscribed (the server restarting, the
broker restarting before the bridge is back) is lost. So each time it has
subscribed, and before it says it is ready, the bridge announces itself on
``tc/srv/up`` (a fresh id, not retained); devices then send their unanswered
requests again at once (same id, same signed frame) instead of waiting for
their timeout.

Inbox publishes that cannot be made (the bridge is cut off from the broker, or
a publish dies with its connection) are not queued: the bridge remembers whose
they were and, once subscribed again, pushes each of those users ``sync``, and
their devices resume (``ChatClient`` does). Inbox pushes do not travel over the
bus (the process that stored a message publishes it to the broker itself), so a
bus outage costs MQTT devices nothing.

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
import collections
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
import nacl.exceptions
import nacl.signing
from paho.mqtt.reasoncodes import ReasonCode

from teleconsult.core.backoff import Backoff
from teleconsult.core.errors import ClientError, ConfigError
from teleconsult.core.identity import Principal
from teleconsult.core.revocation import Revocation, RevocationHandler
from teleconsult.core.settings import ChatSettings, MqttSettings
from teleconsult.messaging import mqtt_wire, wire
from teleconsult.messaging.chat import ChatService
from teleconsult.messaging.mqtt_dynsec import Dynsec, MqttAccounts
from teleconsult.messaging.records import Device, StoredMessage
from teleconsult.realtime import acks
from teleconsult.realtime.limits import TokenBucket, rate_limited
from teleconsult.realtime.refusals import MQTT_VIA

logger = logging.getLogger(__name__)

# Resolves the user a request topic names; raises ClientError when they may not chat.
PrincipalSource = Callable[[UUID], Awaitable[Principal]]
# A device by id, revoked or not; None when there is none.
DeviceSource = Callable[[UUID], Awaitable[Device | None]]

MAX_CONCURRENT = 64
MAX_PENDING_PUBLISHES = 10_000
MAX_OWED_SYNCS = 100_000  # users owed a ``sync`` after lost inbox publishes
# How long a starting server waits for the bridge's subscription: with the broker
# there, the server answers nothing before its bridge can take requests.
FIRST_SUBSCRIPTION_WITHIN = 3.0
PRINCIPAL_TTL = 30.0  # a disabled account is refused within this many seconds
DEVICE_TTL = 30.0  # a revoked device's requests are dropped within this many seconds
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
        devices: DeviceSource,
        signed_requests: bool = True,
        signature_window: float = 300.0,
        on_dropped: Callable[[str], None] | None = None,
    ) -> None:
        self._chat = chat
        self._principals = principals
        self._devices = devices
        self._signed_requests = signed_requests
        self._signature_window_ms = signature_window * 1000
        self._on_dropped = on_dropped
        # Requests dropped unanswered, by reason (``_authentic``).
        self.dropped: collections.Counter[str] = collections.Counter()
        self._device_keys: dict[UUID, tuple[Device | None, float]] = {}
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
        # Inbox publishes in flight, by their user: owed a ``sync`` if the link dies.
        self._inflight: dict[asyncio.Task[None], UUID] = {}
        self._owed: dict[UUID, None] = {}  # insertion-ordered set
        self._pay_later: asyncio.TimerHandle | None = None
        self.syncs = 0  # ``sync`` pushes made after lost inbox publishes (tests, metrics)
        self.syncs_forgone = 0  # users not remembered past MAX_OWED_SYNCS
        self.announcements = 0
        chat.add_sink(self.deliver)

    async def start(self, *, wait: float = 0.0) -> None:
        """Start connecting; wait up to ``wait`` seconds for the first subscription."""
        self._runner = asyncio.create_task(self._run(), name="mqtt-bridge")
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.ready.wait()

    async def subscribed(self) -> bool:
        """The readiness probe: True while subscribed to requests (and announced)."""
        return self.ready.is_set()

    async def close(self) -> None:
        if self._pay_later is not None:
            self._pay_later.cancel()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- the connection ---------------------------------------------------------------

    async def _run(self) -> None:
        # A broker restart takes seconds: come back soon after it, devices are waiting.
        backoff = Backoff(first=0.2, most=5.0)
        while True:
            try:
                async with self._connect() as client:
                    codes = await client.subscribe(self._filter, qos=1)
                    if refused(codes):
                        logger.error("the MQTT broker refused the subscription %s", self._filter)
                    else:
                        self._client = client
                        # Subscribed first: a request sent after this reaches us.
                        await self._announce(client)
                        self.ready.set()
                        backoff.reset()
                        logger.info("MQTT bridge subscribed to %s", self._filter)
                        self._pay_syncs()
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
                self._lost_link()
            await asyncio.sleep(backoff.delay())

    async def _announce(self, client: aiomqtt.Client) -> None:
        """Tell every device a bridge is subscribed: their unanswered requests may be lost.

        QoS 0 and not retained: only devices connected now need it (one that
        connects later sends its unanswered requests on connecting anyway), and a
        broker does not queue it for offline sessions."""
        payload = mqtt_wire.encode_server_up(secrets.token_urlsafe(9))
        await client.publish(mqtt_wire.SERVER_UP_TOPIC, payload, qos=0)
        self.announcements += 1

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
                    verdict = await self._authentic(user_id, request)
                    if isinstance(verdict, dict):
                        ack = verdict
                    elif verdict:
                        ack = await self._handle(user_id, request)
                    else:
                        continue
                self._answer(user_id, request.id, ack, request.encoding)
        finally:
            if self._queues.get(user_id) is queue:
                del self._queues[user_id]

    async def _authentic(self, user_id: UUID, request: mqtt_wire.Request) -> bool | dict[str, Any]:
        """Whether one of ``user_id``'s devices signed ``request``; if not, drop and count it.

        The device could not be loaded: counted too, and answered with the failure's
        ack (``unavailable`` while the database is down, so the device sends it again
        shortly); nothing runs."""
        if request.signed is None or request.signature is None or request.device is None:
            return not self._signed_requests or self._drop(user_id, "unsigned")
        try:
            device = await self._device(request.device)
        except Exception as exc:
            self._drop(user_id, "device_unavailable")
            return acks.failure(exc, "loading the device of an MQTT request")
        if device is None or device.user_id != user_id:
            return self._drop(user_id, "foreign_device")
        if device.revoked_at is not None:
            return self._drop(user_id, "revoked_device")
        try:
            nacl.signing.VerifyKey(device.ed25519_public).verify(
                mqtt_wire.signing_bytes(user_id, request.signed), request.signature
            )
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return self._drop(user_id, "bad_signature")
        # A Last Will is signed when its connection opens and sent when it dies,
        # perhaps hours later; all it can do is end that connection's presence.
        if request.event != mqtt_wire.OFFLINE:
            assert request.ts is not None
            if abs(time.time() * 1000 - request.ts) > self._signature_window_ms:
                return self._drop(user_id, "stale")
        return True

    def _drop(self, user_id: UUID, reason: str) -> bool:
        self.dropped[reason] += 1
        if self._on_dropped is not None:
            self._on_dropped(reason)
        logger.warning("dropped an MQTT request on the topic of user %s: %s", user_id, reason)
        return False

    async def _device(self, device_id: UUID) -> Device | None:
        now = time.monotonic()
        cached = self._device_keys.get(device_id)
        if cached is not None and now - cached[1] < DEVICE_TTL:
            return cached[0]
        if len(self._device_keys) >= _MAX_CACHED_USERS:
            self._device_keys.clear()
        device = await self._devices(device_id)
        self._device_keys[device_id] = (device, now)
        return device

    async def revoke(self, revocation: Revocation) -> None:
        """A RevocationHandler: the user's role, account and devices are read afresh next time."""
        self._cached.pop(revocation.user_id, None)
        for device_id, (device, _) in list(self._device_keys.items()):
            if device is not None and device.user_id == revocation.user_id:
                del self._device_keys[device_id]

    async def _handle(self, user_id: UUID, request: mqtt_wire.Request) -> dict[str, Any]:
        try:
            principal = await self._principal(user_id)
        except ClientError as exc:
            return acks.error_ack(exc)
        except Exception as exc:
            return acks.failure(exc, "loading the user of an MQTT request")
        if request.event in mqtt_wire.LINK_EVENTS:
            return await self._link(principal.user_id, request)
        return await self._chat.handle(principal, request.event, request.data, via=MQTT_VIA)

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
        except Exception as exc:
            return acks.failure(exc, "recording an MQTT connection's presence")

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
            self._publish(mqtt_wire.inbox_topic(member), payload, inbox_of=member)

    def _publish(self, topic: str, payload: bytes, *, inbox_of: UUID | None = None) -> None:
        """Publish in the background, in call order. When the broker is away, an ack is
        dropped (the device sends its request again) and an inbox push is owed as a
        ``sync`` to its user (``_pay_syncs``)."""
        client = self._client
        if client is None or len(self._tasks) >= MAX_PENDING_PUBLISHES:
            if inbox_of is not None:
                self._owe(inbox_of)
            else:
                logger.debug("dropped an MQTT ack: the broker is not connected or is slow")
            return
        # The PUBLISH is queued in paho before the task's first await, so
        # publishes go out in the order of these calls.
        task = self._spawn(self._publish_one(client, topic, payload, inbox_of))
        if inbox_of is not None:
            self._inflight[task] = inbox_of
            task.add_done_callback(self._landed)

    async def _publish_one(
        self, client: aiomqtt.Client, topic: str, payload: bytes, inbox_of: UUID | None
    ) -> None:
        try:
            await client.publish(topic, payload, qos=1)
        except aiomqtt.MqttError as exc:
            logger.debug("an MQTT publish failed: %s", exc)
            if inbox_of is not None:
                self._owe(inbox_of)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)

    def _lost_link(self) -> None:
        """The connection is gone: inbox publishes still waiting for their PUBACK
        may be lost with it (aiomqtt would wait out their timeout), so owe them now."""
        for task, user_id in list(self._inflight.items()):
            task.cancel()
            self._owe(user_id)
        self._inflight.clear()

    def _owe(self, user_id: UUID) -> None:
        if user_id in self._owed:
            return
        if len(self._owed) >= MAX_OWED_SYNCS:
            self.syncs_forgone += 1
            if self.syncs_forgone == 1 or self.syncs_forgone % 10_000 == 0:
                logger.warning(
                    "%d MQTT user(s) owed a sync were forgotten (too many); they catch up "
                    "when they reconnect or at their next message",
                    self.syncs_forgone,
                )
            return
        self._owed[user_id] = None
        if self._client is not None and self._pay_later is None:
            # Lost on a live link (no PUBACK in time, too many publishes waiting):
            # make up for it shortly, at most once a second.
            self._pay_later = asyncio.get_running_loop().call_later(1.0, self._pay_syncs)

    def _pay_syncs(self) -> None:
        """Push ``sync`` to every user whose inbox publish was lost: their devices resume."""
        if self._pay_later is not None:
            self._pay_later.cancel()
            self._pay_later = None
        if self._client is None or not self._owed:
            return
        owed, self._owed = list(self._owed), {}
        payload = mqtt_wire.encode_event(mqtt_wire.SYNC, {})
        for user_id in owed:
            self._publish(mqtt_wire.inbox_topic(user_id), payload, inbox_of=user_id)
        self.syncs += len(owed)
        logger.info("MQTT bridge: told %d user(s) to resume after lost inbox publishes", len(owed))

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


@dataclass(frozen=True)
class MqttParts:
    """What the MQTT transport runs: the bridge, and the MQTT accounts when provisioned."""

    bridge: MqttBridge
    accounts: MqttAccounts | None = None


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
    devices: DeviceSource,
    on_dropped: Callable[[str], None] | None = None,
    revocations: Callable[[RevocationHandler], None] | None = None,
) -> AsyncIterator[MqttParts | None]:
    """The bridge, and the embedded broker first when no external one is configured.

    With ``MQTT_PROVISIONING=dynsec``, the devices' MQTT accounts on the external
    Mosquitto too (``mqtt_dynsec``), prepared before the bridge subscribes.
    ``revocations`` registers each part's RevocationHandler: the bridge's, the
    embedded broker's (closes the revoked sessions' connections) and the
    accounts' (disables the user's MQTT accounts).
    """
    if not settings.enabled:
        yield None
        return
    async with contextlib.AsyncExitStack() as stack:
        accounts: MqttAccounts | None = None
        if settings.url is not None:
            address, group = BrokerAddress.from_url(settings.url), settings.shared_group
            if settings.provisioning == "dynsec":
                dynsec = Dynsec(
                    address.host,
                    address.port,
                    username=address.username,
                    password=address.password,
                    tls=address.tls,
                )
                await dynsec.start()
                stack.push_async_callback(dynsec.close)
                accounts = MqttAccounts(
                    dynsec, bridge_username=address.username or "", shared_group=group
                )
                await accounts.prepare()
                if revocations is not None:
                    revocations(accounts.revoke)
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
            if revocations is not None:
                revocations(broker.revoke)
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
            devices=devices,
            signed_requests=settings.signed_requests,
            signature_window=settings.signature_window,
            on_dropped=on_dropped,
        )
        if revocations is not None:
            revocations(bridge.revoke)
        stack.push_async_callback(bridge.close)
        await bridge.start(wait=FIRST_SUBSCRIPTION_WITHIN)
        yield MqttParts(bridge, accounts)
