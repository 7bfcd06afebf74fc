"""The one Socket.IO server (engine.io on ``/socket.io/``) that ``/chat`` and ``/signal``
share, and the connect handshake both namespaces use."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Literal

import socketio
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from teleconsult.core.errors import Unauthenticated
from teleconsult.core.settings import ChatSettings

# Binary attachments one client packet may announce (a `send` in msgpack has one).
MAX_ATTACHMENTS = 4
# How a connection wants binary values (envelopes): base64url text, or msgpack bytes.
Encoding = Literal["json", "msgpack"]
ENCODINGS: tuple[Encoding, ...] = ("json", "msgpack")


def refusal(error: dict[str, Any]) -> socketio.exceptions.ConnectionRefusedError:
    """The client's ``connect_error`` gets ``{message, data: {code, status, detail}}``."""
    return socketio.exceptions.ConnectionRefusedError(error["detail"], error)


def connect_auth(auth: Any, *, encoding: Encoding = "json") -> tuple[str, Encoding]:
    if not isinstance(auth, dict) or not isinstance(auth.get("token"), str):
        raise Unauthenticated("send {token: <access token>} in the connect auth object")
    chosen = auth.get("encoding", encoding)
    if chosen not in ENCODINGS:
        raise Unauthenticated("encoding must be json or msgpack")
    return auth["token"], chosen


class _BoundedPacket(socketio.packet.Packet):
    """Refuses packets announcing more binary attachments than any event of ours has.

    python-socketio keeps a packet's attachments (each up to the frame limit)
    until as many have come as its header announced, up to ten digits' worth:
    one connection could otherwise hold any amount of server memory.
    """

    def decode(self, encoded_packet: Any) -> int:
        count = int(super().decode(encoded_packet) or 0)
        if count > MAX_ATTACHMENTS:
            raise ValueError(f"a packet announced {count} binary attachments")
        return count


PATH = "/socket.io/"


def outside_realtime(middleware: Middleware) -> Middleware:
    """``middleware`` for every request but engine.io's (``/socket.io/``).

    An aiohttp middleware's frame lives as long as the request it wraps, and a
    WebSocket is one request for the life of the connection: request ids, HTTP
    metrics and problem documents kept three frames (about 1.5 KiB) per idle
    connection for nothing, since engine.io answers its own errors and realtime
    connections have their own metrics. This wrapper hands such a request on
    without a frame of its own.
    """

    @web.middleware
    def wrapped(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
        if request.path.startswith(PATH):
            return handler(request)
        return middleware(request, handler)

    return wrapped


def attach_socketio(app: web.Application, settings: ChatSettings) -> socketio.AsyncServer:
    server = socketio.AsyncServer(
        async_mode="aiohttp",
        serializer=_BoundedPacket,
        async_handlers=False,
        max_http_buffer_size=settings.max_frame_bytes,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        cors_allowed_origins=[],
        logger=False,
        engineio_logger=False,
    )
    server.attach(app, socketio_path=PATH.strip("/"))
    return server
