"""The MQTT transport for :class:`ChatClient`: requests, acks and an inbox over a broker.

The device connects with its user id as username and a current access token
as password (the embedded broker and EMQX check it; see docs/mqtt.md), QoS 1
everywhere, and a persistent session under a client id that starts with the
user id and stays the same for the device: pushed messages published while
it is offline wait in the broker. Topics and payloads are in
``messaging/mqtt_wire.py``.

Presence (docs/mqtt.md): each connection gets a random ``conn`` id. The
device says ``online`` with it as soon as it is connected and again every
``renew_in`` seconds the ack names; it leaves an ``offline`` request as its
Last Will, so a dropped link is seen as soon as the broker notices, and says
``offline`` itself before a clean disconnect (which discards the will).

Given the device's id and keys, every request (the will too) is signed with
the device's Ed25519 key (docs/mqtt.md, "Signed requests"); a server
requires that unless ``MQTT_REQUEST_SIGNATURES=off``.

Unanswered requests are sent again, the same bytes (same id, same signed
frame; every event is idempotent), at once when the connection comes back
and whenever a bridge announces on ``tc/srv/up`` that it has (re)subscribed: a
request published while no bridge was subscribed (the server restarting, the
broker restarting before the bridge) is otherwise lost, and its caller would
wait out the whole timeout. ``online`` and ``offline`` belong to one
connection and fail with it instead. A ``sync`` pushed on the inbox (the
server lost some pushes to us) reaches the event handler like any event, and
``ChatClient`` resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import aiomqtt
import nacl.signing
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from teleconsult.client.crypto import DeviceKeys
from teleconsult.client.transport import (
    RECONNECT_CAP,
    ConnectedHandler,
    EventHandler,
    Refused,
    TokenProvider,
    TransportClosed,
)
from teleconsult.core.backoff import Backoff
from teleconsult.messaging import mqtt_wire

logger = logging.getLogger(__name__)

# CONNACK codes that retrying with the same credentials cannot fix (3.1.1: 4, 5; MQTT 5: 134, 135).
_REFUSED = frozenset({4, 5, 134, 135})
_RENEW_IN = 20.0  # when an ``online`` ack names no interval
_GOODBYE_WITHIN = 2.0


def new_client_id(user_id: UUID) -> str:
    """A client id for a new install: keep it, so the broker keeps the session."""
    return f"{user_id}-{secrets.token_urlsafe(9)}"


def _code(rc: int | ReasonCode | None) -> int | None:
    return int(rc.value) if isinstance(rc, ReasonCode) else rc


@dataclass
class _Pending:
    """A request waiting for its ack: its payload, sent again as is when need be."""

    payload: bytes = field(repr=False)
    answer: asyncio.Future[dict[str, Any]]
    # ``online``/``offline`` name one connection: they fail with it, never sent again.
    resend: bool


class MqttTransport:
    """Implements ``Transport``; ``reconnects`` counts the connections after the first."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        user_id: UUID,
        token: TokenProvider,
        client_id: str,
        encoding: str = "msgpack",
        tls: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        keepalive: int = 60,
        device_id: UUID | None = None,
        keys: DeviceKeys | None = None,
        username: str | None = None,
    ) -> None:
        """``device_id`` and ``keys``: the registered device that signs each request.

        ``username``: the MQTT username, by default the user id (the embedded
        broker, EMQX); with accounts the server provisions on Mosquitto, the one
        ``POST /api/v1/devices/{device_id}/mqtt`` gave (its password is ``token``'s).
        """
        if not client_id.startswith(str(user_id)):
            raise ValueError("the client id must start with the user id")
        if (device_id is None) != (keys is None):
            raise ValueError("give both the device id and its keys, or neither")
        self._device_id = device_id
        self._username = username or str(user_id)
        # The Ed25519 seed is the second half of DeviceKeys.private_bytes().
        self._signer = None if keys is None else nacl.signing.SigningKey(keys.private_bytes()[32:])
        self._host, self._port = host, port
        self._user_id = user_id
        self._token = token
        self._client_id = client_id
        self._encoding: Any = "json" if encoding == "json" else "msgpack"
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self.connected = asyncio.Event()
        # Set while the server counts this connection as online (its last ``online`` acked).
        self.present = asyncio.Event()
        self.reconnects = 0
        self._client: aiomqtt.Client | None = None
        self._conn = ""  # this connection's id for presence, new for each connection
        self._runner: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        self._pending: dict[str, _Pending] = {}
        self._sending: set[asyncio.Task[None]] = set()
        # Requests published again (reconnects, bridges' announcements); tests read it.
        self.resent = 0
        self._on_event: EventHandler | None = None
        self._on_connected: ConnectedHandler | None = None

    async def start(self, on_event: EventHandler, on_connected: ConnectedHandler) -> None:
        """Connect; the first failure is the caller's to see (Refused or TransportClosed)."""
        self._on_event, self._on_connected = on_event, on_connected
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(first), name="mqtt-transport")
        await first

    async def close(self) -> None:
        """Say ``offline`` (briefly: the will covers a link that is gone), then disconnect."""
        await self._stop_beat()
        if self.connected.is_set():
            with contextlib.suppress(TransportClosed):
                await self.call(mqtt_wire.OFFLINE, {"conn": self._conn}, within=_GOODBYE_WITHIN)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._fail_pending(every=True)
        self.connected.clear()
        self.present.clear()

    @property
    def pending(self) -> int:
        """How many calls wait for their ack."""
        return len(self._pending)

    async def call(self, event: str, data: Any, *, within: float) -> dict[str, Any]:
        """One request, answered within ``within`` seconds or TransportClosed.

        A call outlives a reconnection: its request is sent again on the new
        connection (``online``/``offline`` excepted, they fail at once)."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise TransportClosed("not connected")
        request_id = secrets.token_urlsafe(9)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        pending = _Pending(
            self._request(request_id, event, data),
            answer,
            resend=event not in mqtt_wire.LINK_EVENTS,
        )
        self._pending[request_id] = pending
        self._send(client, pending.payload)
        try:
            async with asyncio.timeout(within):
                return await answer
        except TimeoutError:
            raise TransportClosed("no answer in time") from None
        finally:
            self._pending.pop(request_id, None)

    def _send(self, client: aiomqtt.Client, payload: bytes) -> None:
        """Publish (QoS 1) in the background; a PUBACK lost with the link is not waited
        for: the request is sent again when the connection comes back."""
        task = asyncio.create_task(self._publish(client, payload))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _publish(self, client: aiomqtt.Client, payload: bytes) -> None:
        try:
            await client.publish(mqtt_wire.request_topic(self._user_id), payload, qos=1)
        except aiomqtt.MqttError as exc:
            logger.debug("an MQTT request was not published: %s", exc)

    def _resend(self, client: aiomqtt.Client, *, links: bool) -> None:
        """Send every unanswered request again, oldest first (``links``: online/offline too)."""
        for pending in list(self._pending.values()):
            if (pending.resend or links) and not pending.answer.done():
                self._send(client, pending.payload)
                self.resent += 1

    def _fail_pending(self, *, every: bool) -> None:
        for pending in self._pending.values():
            if (every or not pending.resend) and not pending.answer.done():
                pending.answer.set_exception(TransportClosed("disconnected"))

    def _request(self, request_id: str, event: str, data: Any) -> bytes:
        """The request's payload, signed by the device when it has keys."""
        if self._signer is None or self._device_id is None:
            return mqtt_wire.encode_request(request_id, event, data, self._encoding)
        frame = mqtt_wire.request_frame(
            request_id,
            event,
            data,
            self._encoding,
            device=self._device_id,
            ts=int(time.time() * 1000),
        )
        signature = self._signer.sign(mqtt_wire.signing_bytes(self._user_id, frame)).signature
        return mqtt_wire.signed_request(frame, signature, self._encoding)

    # --- the connection ---------------------------------------------------------------

    async def _run(self, first: asyncio.Future[None]) -> None:
        backoff = Backoff(most=RECONNECT_CAP)
        while True:
            try:
                async with await self._connect() as client:
                    await client.subscribe(
                        [
                            (mqtt_wire.ack_topic(self._user_id), 1),
                            (mqtt_wire.inbox_topic(self._user_id), 1),
                            # Refused by a broker whose rules predate it: then a lost
                            # request waits for its timeout, as it used to.
                            (mqtt_wire.SERVER_UP_TOPIC, 0),
                        ]
                    )
                    self._client = client
                    self.connected.set()
                    # What the old connection left unanswered, before anything new.
                    self._resend(client, links=False)
                    # Published before on_connected's requests: the bridge runs them in order.
                    self._beat = asyncio.create_task(self._keep_online(), name="mqtt-online")
                    if first.done():
                        self.reconnects += 1
                    else:
                        first.set_result(None)
                    backoff.reset()
                    assert self._on_connected is not None
                    await self._on_connected()
                    async for message in client.messages:
                        await self._take(message)
            except MqttConnectError as exc:
                if _code(exc.rc) in _REFUSED:
                    self._fail(first, Refused({"code": "unauthenticated", "detail": str(exc)}))
                    logger.warning("the broker refused the credentials; not reconnecting")
                    self._fail_pending(every=True)
                    return
                self._fail(first, TransportClosed(str(exc)))
            except aiomqtt.MqttError as exc:
                self._fail(first, TransportClosed(str(exc)))
            finally:
                self._client = None
                self.connected.clear()
                await self._stop_beat()
                # Publishes of the dead connection would wait out their PUBACK timeout.
                for task in list(self._sending):
                    task.cancel()
                self._fail_pending(every=False)
            if first.done() and first.exception() is not None:
                return  # start() raised; nobody waits for this transport
            await asyncio.sleep(backoff.delay())

    async def _keep_online(self) -> None:
        """Say ``online`` now and again before the server forgets this connection."""
        conn, backoff = self._conn, Backoff(first=1.0, most=30.0)
        while True:
            try:
                ack = await self.call(
                    mqtt_wire.ONLINE, {"conn": conn}, within=self._connect_timeout
                )
            except TransportClosed:
                # No answer (no server on the broker just now): the link may be
                # fine, and the server may have forgotten us meanwhile.
                self.present.clear()
                await asyncio.sleep(backoff.delay())
                continue
            if ack.get("ok") is True:
                self.present.set()
                backoff.reset()
                renew_in = ack.get("renew_in")
                if not isinstance(renew_in, int | float):
                    renew_in = _RENEW_IN
                await asyncio.sleep(max(1.0, float(renew_in)))
                continue
            error = ack.get("error")
            error = error if isinstance(error, dict) else {}
            retry_after = error.get("retry_after")
            if not isinstance(retry_after, int | float):
                # Refused for good (an older server without presence, a disabled account).
                logger.warning("the server refused the online notice: %s", error.get("code"))
                self.present.clear()
                return
            await asyncio.sleep(float(retry_after))

    async def _stop_beat(self) -> None:
        beat, self._beat = self._beat, None
        if beat is not None and beat is not asyncio.current_task():
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        self.present.clear()

    @staticmethod
    def _fail(first: asyncio.Future[None], exc: Exception) -> None:
        """The first connection's failure goes to ``start``; later ones just reconnect."""
        if not first.done():
            first.set_exception(exc)

    async def _connect(self) -> aiomqtt.Client:
        self._conn = secrets.token_urlsafe(12)
        will = aiomqtt.Will(
            mqtt_wire.request_topic(self._user_id),
            self._request(
                mqtt_wire.offline_will_id(self._conn), mqtt_wire.OFFLINE, {"conn": self._conn}
            ),
            qos=1,
        )
        return aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=await self._token(),
            identifier=self._client_id,
            clean_session=False,
            keepalive=self._keepalive,
            will=will,
            timeout=self._connect_timeout,
            tls_context=self._tls,
            logger=logger,
            # Acks and pushes are small writes back to back: without this,
            # Nagle holds each behind the peer's delayed ACK (44 ms vs 9 ms p50,
            # bench/mqtt_path.py).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def _take(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            return
        try:
            frame = mqtt_wire.decode(bytes(payload))
        except (ValueError, TypeError):
            logger.warning("dropped an undecodable MQTT frame")
            return
        if not isinstance(frame, dict):
            return
        topic = str(message.topic)
        if topic == mqtt_wire.ack_topic(self._user_id):
            pending = self._pending.get(str(frame.get("id")))
            ack = frame.get("ack")
            if pending is not None and not pending.answer.done() and isinstance(ack, dict):
                pending.answer.set_result(ack)
        elif topic == mqtt_wire.SERVER_UP_TOPIC:
            # A bridge has just subscribed: what we sent before may have found none.
            client = self._client
            if client is not None and self._pending:
                logger.debug("a bridge is back; sending %d request(s) again", len(self._pending))
                self._resend(client, links=True)
        elif topic == mqtt_wire.inbox_topic(self._user_id) and self._on_event is not None:
            await self._on_event(str(frame.get("event")), frame.get("data"))
