"""Socket.IO namespace ``/chat``: connections of signed-in users, each event to ChatService.

WebSocket, with HTTP long-polling for networks that block or break WebSockets
(engine.io negotiates and upgrades). The client sends its access token in the
connect ``auth`` object and chooses how envelopes travel: ``json`` (base64url
text) or ``msgpack`` (binary attachments, about half the bytes). Every other
event is a request with an ack (docs/protocol.md, "Real-time events").

Events of one connection are handled one after another, in the order they
arrived (the server runs with ``async_handlers=False``), so one sender's
messages are stored in the order it sent them and a fast sender is slowed by TCP
rather than by server memory. Pushed events go out through the hub, which cuts
slow consumers; the session guard ends connections whose session ended.
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

from teleconsult.core.errors import ClientError, ErrorCode, InfrastructureError, Unauthenticated
from teleconsult.core.settings import ChatSettings
from teleconsult.messaging import wire
from teleconsult.messaging.chat import ChatService
from teleconsult.realtime import acks, seam
from teleconsult.realtime.connection import Connection
from teleconsult.realtime.guard import SessionGuard
from teleconsult.realtime.hub import SLOW_CONSUMER
from teleconsult.realtime.limits import TokenBucket, rate_limited
from teleconsult.realtime.server import connect_auth, refusal

logger = logging.getLogger(__name__)

NAMESPACE = "/chat"


class ChatNamespace(socketio.AsyncNamespace):
    def __init__(self, *, chat: ChatService, guard: SessionGuard, settings: ChatSettings) -> None:
        super().__init__(NAMESPACE)
        self._chat = chat
        self._guard = guard
        self._settings = settings
        self._connections: dict[str, Connection] = {}
        guard.on_close(NAMESPACE, self.close)
        chat.hub.on_slow_consumer(self.close)

    def connection_count(self) -> int:
        return len(self._connections)

    async def on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        try:
            token, encoding = connect_auth(auth)
            grant = await self._guard.authority.grant(token)
        except ClientError as exc:
            raise refusal(acks.error_ack(exc)["error"]) from None
        eio = seam.eio_sid(self.server, sid, NAMESPACE)
        if eio is None:  # the client went away while we checked its token
            raise refusal(acks.error_ack(Unauthenticated("not connected"))["error"])
        s = self._settings
        conn = Connection(
            sid=sid,
            eio=eio,
            namespace=NAMESPACE,
            grant=grant,
            encoding=encoding,
            bucket=TokenBucket(s.events_per_second, s.event_burst),
        )
        self._connections[sid] = conn
        try:
            await self._chat.open_session(conn)
        except InfrastructureError:
            self._connections.pop(sid, None)
            raise refusal(
                {"code": str(ErrorCode.UNAVAILABLE), "status": 503, "detail": "try again"}
            ) from None
        self._guard.track(conn)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self._connections.pop(sid, None)
        if conn is None:
            return
        conn.closing = True
        self._guard.forget(conn)
        await self._chat.close_session(conn)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        sid = args[0]
        # The server's own connect and disconnect come while the sid is pending; a
        # client may also emit events with those names, which must not reach here.
        if event in ("connect", "disconnect") and not self.server.manager.is_connected(
            sid, NAMESPACE
        ):
            return await super().trigger_event(event, *args)
        data = args[1] if len(args) > 1 else None
        conn = self._connections.get(sid)
        if conn is None or conn.closing:
            return acks.error_ack(Unauthenticated("not connected"))
        wait = conn.bucket.take()
        if wait:
            return acks.error_ack(rate_limited(wait))
        if event == "auth":
            return await self._reauth(conn, data)
        if conn.expired():
            return acks.error_ack(
                Unauthenticated(
                    "the access token expired; send auth with a fresh one",
                    code=ErrorCode.TOKEN_EXPIRED,
                )
            )
        ack = await self._chat.handle(conn.principal, event, data, skip=sid)
        return wire.ack_for_encoding(event, ack, conn.encoding)

    async def _reauth(self, conn: Connection, data: Any) -> dict[str, Any]:
        """A fresh access token for a long-lived connection (after a refresh)."""
        try:
            token, _ = connect_auth(data, encoding=conn.encoding)
            grant = await self._guard.authority.grant(token)
            if grant.principal.user_id != conn.user_id:
                raise Unauthenticated("the token is for another user")
        except ClientError as exc:
            return acks.error_ack(exc)
        conn.renew(grant)
        return acks.ok()

    async def close(self, conn: Connection, reason: str) -> None:
        """Say why, ahead of anything the client has not read yet, then disconnect."""
        conn.closing = True
        self._chat.hub.tell(conn, "bye", {"reason": reason}, first=reason == SLOW_CONSUMER)
        await self.server.disconnect(conn.sid, namespace=NAMESPACE)
