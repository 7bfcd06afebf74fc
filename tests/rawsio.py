"""Clients for hostile /chat tests: raw python-socketio, and Socket.IO by hand over a WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import socketio

NS = "/chat"


# ----------------------------------------------------------------------------


class Raw:
    """A bare python-socketio client: any event, any payload, acks as they come."""

    def __init__(self, namespace: str = NS) -> None:
        self.namespace = namespace
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.pushed: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.refusals: list[Any] = []
        self.gone = asyncio.Event()
        self.sio.on("*", self._pushed, namespace=namespace)
        self.sio.on("connect_error", self._refused, namespace=namespace)
        self.sio.on("disconnect", self._disconnected, namespace=namespace)

    async def _pushed(self, event: str, data: Any = None) -> None:
        self.pushed.put_nowait((event, data))

    async def _refused(self, data: Any = None) -> None:
        self.refusals.append(data)

    async def _disconnected(self, *_: Any) -> None:
        self.gone.set()

    async def connect(self, base: str, auth: Any, *, transport: str = "websocket") -> None:
        await self.sio.connect(
            base, auth=auth, transports=[transport], namespaces=[self.namespace], wait_timeout=10
        )

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.sio.call(event, data, namespace=self.namespace, timeout=10)

    async def next_event(self, name: str, *, within: float | None = None) -> Any:
        async with asyncio.timeout(within):
            while True:
                event, data = await self.pushed.get()
                if event == name:
                    return data


@contextlib.asynccontextmanager
async def raw(
    base: str, token: str, *, encoding: str = "json", transport: str = "websocket"
) -> AsyncIterator[Raw]:
    client = Raw()
    try:
        await client.connect(base, {"token": token, "encoding": encoding}, transport=transport)
        yield client
    finally:
        await client.sio.disconnect()


async def refusal(base: str, auth: Any) -> Any:
    """What the server sends with its refusal of a connect with ``auth``."""
    client = Raw()
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(base, auth)
    finally:
        await client.sio.disconnect()
    assert len(client.refusals) == 1, client.refusals
    return client.refusals[0]


def _small_receive_window(addr_info: Any) -> socket.socket:
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    # Set before connecting, so the kernel cannot grow the window behind our back.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


class HandSpoken:
    """Engine.IO 4 / Socket.IO 5 by hand over an aiohttp WebSocket.

    It sends frames no client library would produce, and it can stop reading:
    aiohttp then stops reading the socket once its own small buffer is full,
    and with a small receive window the server soon cannot write either.
    """

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._http = http
        self.ws = ws
        self._ack = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, base: str, auth: dict[str, Any], *, small_window: bool = False
    ) -> AsyncIterator[HandSpoken]:
        connector = aiohttp.TCPConnector(
            socket_factory=_small_receive_window if small_window else None
        )
        http = aiohttp.ClientSession(connector=connector)
        try:
            ws = await http.ws_connect(
                base + "/socket.io/?EIO=4&transport=websocket", max_msg_size=0
            )
            me = cls(http, ws)
            try:
                opening = await me.frame()
                assert opening.startswith("0{"), opening
                await ws.send_str(f"40{NS}," + json.dumps(auth))
                connected = await me.frame()
                assert connected.startswith(f"40{NS},"), connected
                yield me
            finally:
                await ws.close()
        finally:
            await http.close()

    async def frame(self) -> str:
        """The next text frame, answering the server's pings on the way."""
        while True:
            msg = await self.ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionResetError(f"the server closed the WebSocket ({msg.type.name})")
            if msg.data == "2":
                await self.ws.send_str("3")
                continue
            return str(msg.data)

    async def call(self, event: str, text: str) -> Any:
        """Send ``text`` as the raw JSON of an event's arguments; the ack's first item."""
        self._ack += 1
        await self.ws.send_str(f"42{NS},{self._ack}[{json.dumps(event)},{text}]")
        prefix = f"43{NS},{self._ack}"
        while True:
            got = await self.frame()
            if got.startswith(prefix):
                return json.loads(got[len(prefix) :])[0]


def refused(ack: Any, code: str, status: int) -> dict[str, Any]:
    assert isinstance(ack, dict) and ack.get("ok") is False, ack
    error: dict[str, Any] = ack["error"]
    assert (error["code"], error["status"]) == (code, status), error
    assert isinstance(error["detail"], str) and error["detail"], error
    return error
