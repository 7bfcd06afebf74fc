"""How the chat scenario's users reach the server: Socket.IO (WebSocket or
long-polling) or MQTT, each wrapped to count what the server pushes."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from teleconsult.client.crypto import DeviceKeys
from teleconsult.client.mqtt import MqttTransport, new_client_id
from teleconsult.client.rest import RestClient
from teleconsult.client.transport import (
    ConnectedHandler,
    EventHandler,
    SocketIoTransport,
    Transport,
)
from teleconsult.loadtest import LoadtestError

TRANSPORTS = ("websocket", "polling", "mqtt", "mixed")
MIXED = ("websocket", "polling", "mqtt")  # handed out in turn by --transport mixed


class CountingTransport:
    """A transport that counts what the server pushes, before the client de-duplicates."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.connected = inner.connected
        self.pushes = 0
        self.repeated_pushes = 0
        self._seen: set[tuple[str, int]] = set()

    @property
    def reconnects(self) -> int:
        return int(getattr(self.inner, "reconnects", 0))

    async def start(self, on_event: EventHandler, on_connected: ConnectedHandler) -> None:
        async def counted(event: str, data: Any) -> None:
            if event == "message" and isinstance(data, dict):
                key = (str(data.get("thread_id")), int(data.get("seq") or 0))
                self.pushes += 1
                if key in self._seen:
                    self.repeated_pushes += 1
                self._seen.add(key)
            await on_event(event, data)

        await self.inner.start(counted, on_connected)

    async def call(self, event: str, data: Any, *, within: float) -> dict[str, Any]:
        result: dict[str, Any] = await self.inner.call(event, data, within=within)
        return result

    async def close(self) -> None:
        await self.inner.close()


def mqtt_address(url: str, mqtt_url: str | None) -> tuple[str, int, ssl.SSLContext | None]:
    """Host, port and TLS of the broker: ``--mqtt-url``, else port 1883 on --url's host."""
    parts = urlsplit(mqtt_url or f"mqtt://{urlsplit(url).hostname or '127.0.0.1'}:1883")
    if parts.scheme not in ("mqtt", "mqtts", "tcp"):
        raise LoadtestError(f"--mqtt-url must be mqtt:// or mqtts://, got {mqtt_url!r}")
    tls = ssl.create_default_context() if parts.scheme == "mqtts" else None
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


class Links:
    """Makes each user's transport for ``--transport``; a user's token is read at
    every (re)connect from its REST client, which keeps it fresh."""

    def __init__(self, url: str, mqtt_url: str | None, encoding: str, transport: str) -> None:
        if transport not in TRANSPORTS:
            raise LoadtestError(f"--transport must be one of {', '.join(TRANSPORTS)}")
        self.url, self.encoding, self.transport = url, encoding, transport
        self.mqtt_at = mqtt_address(url, mqtt_url) if transport in ("mqtt", "mixed") else None

    def kind(self, index: int) -> str:
        """The transport of the ``index``-th user."""
        return MIXED[index % len(MIXED)] if self.transport == "mixed" else self.transport

    def make(
        self,
        kind: str,
        rest: RestClient,
        *,
        device_id: UUID | None = None,
        keys: DeviceKeys | None = None,
    ) -> Transport:
        """``device_id`` and ``keys``: MQTT requests are signed with the device's key
        (a server requires it unless MQTT_REQUEST_SIGNATURES=off)."""

        async def token() -> str:
            return rest.access_token

        if kind == "mqtt":
            assert self.mqtt_at is not None and rest.user_id is not None
            host, port, tls = self.mqtt_at
            return MqttTransport(
                host,
                port,
                user_id=rest.user_id,
                token=token,
                client_id=new_client_id(rest.user_id),
                encoding=self.encoding,
                tls=tls,
                device_id=device_id,
                keys=keys,
            )
        return SocketIoTransport(self.url, token, transports=(kind,), encoding=self.encoding)
