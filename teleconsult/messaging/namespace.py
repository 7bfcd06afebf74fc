"""Socket.IO namespace ``/chat``: connections of signed-in users, each event to ChatService.

WebSocket, with HTTP long-polling for networks that block or break WebSockets
(engine.io negotiates and upgrades). The client sends its access token in the
connect ``auth`` object and chooses how envelopes travel: ``json`` (base64url
text) or ``msgpack`` (binary attachments, about half the bytes). Every other
event is a request with an ack (docs/protocol.md, "Real-time events").

What every namespace of signed-in users does (proving the user, the guard, rate
limits, token expiry, ``auth``, ``bye``) is in realtime/namespace.py. Events of
one connection are handled one after another, in the order they arrived, so one
sender's messages are stored in the order it sent them and a fast sender is
slowed by TCP rather than by server memory.
"""

from __future__ import annotations

from typing import Any

from teleconsult.core.settings import ChatSettings
from teleconsult.messaging import wire
from teleconsult.messaging.chat import ChatService
from teleconsult.realtime.connection import Connection
from teleconsult.realtime.guard import SessionGuard
from teleconsult.realtime.namespace import LiveNamespace

NAMESPACE = "/chat"


class ChatNamespace(LiveNamespace):
    def __init__(self, *, chat: ChatService, guard: SessionGuard, settings: ChatSettings) -> None:
        super().__init__(NAMESPACE, guard=guard, hub=chat.hub, settings=settings)
        self._chat = chat

    async def opened(self, conn: Connection) -> None:
        await self._chat.open_session(conn)

    async def closed(self, conn: Connection) -> None:
        await self._chat.close_session(conn)

    async def answer(self, conn: Connection, event: str, data: Any) -> Any:
        ack = await self._chat.handle(
            conn.principal, event, data, via=self.via(conn), skip=conn.sid
        )
        return wire.ack_for_encoding(event, ack, conn.encoding)
