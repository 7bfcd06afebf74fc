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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from typing import Any
from uuid import UUID

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from teleconsult.client.transport import (
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
    ) -> None:
        if not client_id.startswith(str(user_id)):
            raise ValueError("the client id must start with the user id")
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
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
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
        self.connected.clear()
        self.present.clear()

    async def call(self, event: str, data: Any, *, within: float) -> dict[str, Any]:
        client = self._client
        if client is None or not self.connected.is_set():
            raise TransportClosed("not connected")
        request_id = secrets.token_urlsafe(9)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        payload = mqtt_wire.encode_request(request_id, event, data, self._encoding)
        try:
            async with asyncio.timeout(within):
                await client.publish(
                    mqtt_wire.request_topic(self._user_id), payload, qos=1, timeout=within
                )
                return await answer
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise TransportClosed(str(exc) or type(exc).__name__) from None
        finally:
            self._pending.pop(request_id, None)

    # --- the connection ---------------------------------------------------------------

    async def _run(self, first: asyncio.Future[None]) -> None:
        backoff = Backoff()
        while True:
            try:
                async with await self._connect() as client:
                    await client.subscribe(
                        [
                            (mqtt_wire.ack_topic(self._user_id), 1),
                            (mqtt_wire.inbox_topic(self._user_id), 1),
                        ]
                    )
                    self._client = client
                    self.connected.set()
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
                    return
                self._fail(first, TransportClosed(str(exc)))
            except aiomqtt.MqttError as exc:
                self._fail(first, TransportClosed(str(exc)))
            finally:
                self._client = None
                self.connected.clear()
                await self._stop_beat()
                for answer in self._pending.values():
                    if not answer.done():
                        answer.set_exception(TransportClosed("disconnected"))
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
            mqtt_wire.offline_will(self._conn, self._encoding),
            qos=1,
        )
        return aiomqtt.Client(
            self._host,
            self._port,
            username=str(self._user_id),
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
            answer = self._pending.get(str(frame.get("id")))
            ack = frame.get("ack")
            if answer is not None and not answer.done() and isinstance(ack, dict):
                answer.set_result(ack)
        elif topic == mqtt_wire.inbox_topic(self._user_id) and self._on_event is not None:
            await self._on_event(str(frame.get("event")), frame.get("data"))
