"""A lean Socket.IO (engine.io 4) client over aiohttp's WebSocket, for load generation.

python-socketio's ``AsyncClient`` costs the load generator more per event than
a server spends relaying it, and an instance per connection weighs too much
for 10,000 of them. This speaks just enough of the protocol to connect to one
namespace with an auth object, emit events (text, or with one binary
attachment) with an ack id, receive acks and pushed events, and answer the
server's pings. Frames a benchmark sends again and again are built once
(:func:`event_frame`). Callbacks run synchronously in the reader task; they
must not block.

Wire format (socket.io protocol 5 over engine.io 4, WebSocket transport only):
``0{...}`` open; ``2``/``3`` ping/pong; ``4`` + a socket.io packet:
``0/ns,{auth}`` connect, ``4/ns,{err}`` refused, ``2/ns,ID[...]`` event,
``3/ns,ID[...]`` ack, ``5N-/ns,ID[...]`` event with N binary frames after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import aiohttp

EventCallback = Callable[[str, Any, list[bytes]], None]
AckCallback = Callable[[int, Any], None]
PLACEHOLDER = {"_placeholder": True, "num": 0}


class Refused(Exception):
    """The server refused the namespace connection (``connect_error``)."""


def event_frame(namespace: str, event: str, data: Any, ack_id: int | None, binary: bool) -> str:
    """The text frame of one event; with ``binary`` its one attachment follows separately."""
    body = json.dumps([event, data], separators=(",", ":"))
    ack = "" if ack_id is None else str(ack_id)
    kind = "51-" if binary else "2"
    return f"4{kind}{namespace},{ack}{body}"


class SioConnection:
    """One connected namespace. Open with :meth:`open`; ``close`` ends it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, namespace: str) -> None:
        self.ws = ws
        self.namespace = namespace
        self._prefix = namespace + ","
        self.on_event: EventCallback | None = None
        self.on_ack: AckCallback | None = None
        self.on_close: Callable[[], None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._binary_wanted = 0
        self._binary_packet: tuple[str, int | None, Any] | None = None
        self._attachments: list[bytes] = []

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        base_url: str,
        namespace: str,
        auth: dict[str, Any],
        *,
        within: float = 30.0,
    ) -> SioConnection:
        url = base_url.rstrip("/") + "/socket.io/?EIO=4&transport=websocket"
        ws = await session.ws_connect(
            url, autoping=False, compress=0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
        )
        try:
            async with asyncio.timeout(within):
                opened = await ws.receive_str()
                if not opened.startswith("0"):
                    raise Refused(f"expected an engine.io open packet, got {opened[:80]!r}")
                await ws.send_str(f"40{namespace},{json.dumps(auth, separators=(',', ':'))}")
                while True:
                    msg = await ws.receive()
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        if msg.type is aiohttp.WSMsgType.BINARY:
                            continue  # an attachment of an early event
                        raise Refused(f"the connection ended during the handshake: {msg.type}")
                    answer: str = msg.data
                    if answer == "2":
                        await ws.send_str("3")
                    elif answer.startswith(f"40{namespace},"):
                        break
                    elif answer.startswith(f"44{namespace},"):
                        raise Refused(answer[len(namespace) + 3 :])
                    elif not answer.startswith(("42", "45")):
                        # An event pushed before the connect answer (presence) is dropped.
                        raise Refused(f"unexpected answer {answer[:80]!r}")
        except BaseException:
            await ws.close()
            raise
        conn = cls(ws, namespace)
        conn._reader = asyncio.create_task(conn._read())
        return conn

    async def emit(self, frame: str, attachment: bytes | None = None) -> None:
        """Send a frame from :func:`event_frame` (and its attachment, when it has one)."""
        await self.ws.send_str(frame)
        if attachment is not None:
            await self.ws.send_bytes(attachment)

    async def close(self) -> None:
        # Close while the reader still reads: it takes the server's close frame, so
        # aiohttp's close returns at once instead of waiting out its timeout.
        self.on_close = None
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await self._text(msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    self._binary(msg.data)
        finally:
            if self.on_close is not None:
                self.on_close()

    async def _text(self, text: str) -> None:
        if text == "2":
            await self.ws.send_str("3")
            return
        if not text.startswith("4") or len(text) < 2:
            return  # "1" close, "6" noop: nothing to do
        kind = text[1]
        rest = text[2:]
        attachments = 0
        if kind in "56":
            count, _, rest = rest.partition("-")
            attachments = int(count)
        if rest.startswith(self._prefix):
            rest = rest[len(self._prefix) :]
        elif rest.startswith("/"):
            return  # another namespace
        bracket = rest.find("[")
        if bracket < 0:
            if kind == "1":
                await self.ws.close()  # the server closed the namespace
            return
        ack_id = int(rest[:bracket]) if bracket else None
        payload = json.loads(rest[bracket:])
        if kind in "56":
            self._binary_wanted = attachments
            self._binary_packet = (kind, ack_id, payload)
            self._attachments = []
            return
        self._deliver(kind, ack_id, payload, [])

    def _binary(self, data: bytes) -> None:
        if self._binary_packet is None:
            return
        self._attachments.append(data)
        if len(self._attachments) >= self._binary_wanted:
            kind, ack_id, payload = self._binary_packet
            self._binary_packet = None
            self._deliver("2" if kind == "5" else "3", ack_id, payload, self._attachments)

    def _deliver(
        self, kind: str, ack_id: int | None, payload: Any, attachments: list[bytes]
    ) -> None:
        if kind == "3":
            if self.on_ack is not None and ack_id is not None:
                self.on_ack(ack_id, payload[0] if payload else None)
        elif kind == "2" and self.on_event is not None and payload:
            self.on_event(str(payload[0]), payload[1] if len(payload) > 1 else None, attachments)


def client_session(source: str | None = None) -> aiohttp.ClientSession:
    """One HTTP session for many WebSocket connections: no pool limit, no cookies.

    ``source``, a local address such as 127.0.0.2, gives another ~28,000 ephemeral
    ports towards one server port."""
    local = (source, 0) if source else None
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True, local_addr=local),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    )
