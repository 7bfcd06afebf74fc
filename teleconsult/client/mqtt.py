"""The MQTT transport for :class:`ChatClient`: requests, acks and an inbox over a broker.

The device connects with its user id as username and a current access token
as password (the embedded broker and EMQX check it; see docs/mqtt.md), QoS 1
everywhere, and a persistent session under a client id that starts with the
user id and stays the same for the device: pushed messages published while
it is offline wait in the broker. Topics and payloads are in
``messaging/mqtt_wire.py``.
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
        self.reconnects = 0
        self._client: aiomqtt.Client | None = None
        self._runner: asyncio.Task[None] | None = None
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
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self.connected.clear()

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
                for answer in self._pending.values():
                    if not answer.done():
                        answer.set_exception(TransportClosed("disconnected"))
            if first.done() and first.exception() is not None:
                return  # start() raised; nobody waits for this transport
            await asyncio.sleep(backoff.delay())

    @staticmethod
    def _fail(first: asyncio.Future[None], exc: Exception) -> None:
        """The first connection's failure goes to ``start``; later ones just reconnect."""
        if not first.done():
            first.set_exception(exc)

    async def _connect(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self._host,
            self._port,
            username=str(self._user_id),
            password=await self._token(),
            identifier=self._client_id,
            clean_session=False,
            keepalive=self._keepalive,
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
