"""Socket.IO transport: namespace ``/chat`` on the same aiohttp server.

WebSocket, with HTTP long-polling for networks that block or break WebSockets
(engine.io negotiates and upgrades). The client sends its access token in the
connect ``auth`` object and chooses how envelopes travel: ``json`` (base64url
text) or ``msgpack`` (binary attachments, about half the bytes). Every other
event is a request with an ack (see docs/protocol.md, "Real-time events").

Events of one connection are handled one after another, in the order they
arrived, so one sender's messages are stored in the order it sent them and a
fast sender is slowed by TCP rather than by server memory. Pushed events go
through a bounded queue per connection; a client that lets it fill (a slow
consumer) is disconnected and resumes when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import socketio
from aiohttp import web

from teleconsult.api.accounts.service import AccountService
from teleconsult.core.errors import ClientError, ErrorCode, InfrastructureError, Unauthenticated
from teleconsult.core.identity import Principal
from teleconsult.core.settings import ChatSettings
from teleconsult.messaging import wire
from teleconsult.messaging.chat import ChatService, TokenBucket, rate_limited
from teleconsult.messaging.hub import SLOW_CONSUMER

logger = logging.getLogger(__name__)

NAMESPACE = "/chat"
AUTH_RECHECK_SECONDS = 30.0
# Pushed events the engine.io layer may hold for one client beyond our own queue.
_ENGINE_BACKLOG = 64


class SioSession:
    """One Socket.IO connection as the hub sees it."""

    def __init__(
        self,
        server: socketio.AsyncServer,
        sid: str,
        principal: Principal,
        *,
        token: str,
        encoding: wire.Encoding,
        max_queued: int,
        bucket: TokenBucket,
    ) -> None:
        self._server = server
        self._sid = sid
        self.principal = principal
        self.token = token
        self.encoding: wire.Encoding = encoding
        self.bucket = bucket
        self.checked_at = time.monotonic()
        self._queue: asyncio.Queue[tuple[str, Mapping[str, Any]]] = asyncio.Queue(max_queued)
        self._writer = asyncio.create_task(self._write(), name=f"sio-writer-{sid}")
        self._hub_id = f"sio:{secrets.token_hex(8)}:{sid}"

    @property
    def id(self) -> str:
        return self._hub_id

    @property
    def user_id(self) -> UUID:
        return self.principal.user_id

    def push(self, event: str, data: Mapping[str, Any]) -> bool:
        try:
            self._queue.put_nowait((event, data))
        except asyncio.QueueFull:
            return False
        return True

    async def close(self, reason: str) -> None:
        if reason == SLOW_CONSUMER:
            logger.info("closing a slow consumer", extra={"sid": self._sid})
        with contextlib.suppress(Exception):
            await self._server.emit("bye", {"reason": reason}, to=self._sid, namespace=NAMESPACE)
        await self._server.disconnect(self._sid, namespace=NAMESPACE)

    async def stop(self) -> None:
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    def _engine_backlog(self) -> int:
        eio_sid = self._server.manager.eio_sid_from_sid(self._sid, NAMESPACE)
        socket = self._server.eio.sockets.get(eio_sid) if eio_sid else None
        queue = getattr(socket, "queue", None)
        return queue.qsize() if queue is not None else 0

    async def _write(self) -> None:
        while True:
            event, data = await self._queue.get()
            # Wait (while our own bounded queue fills) rather than pile packets
            # into engine.io's unbounded one.
            while self._engine_backlog() > _ENGINE_BACKLOG:
                await asyncio.sleep(0.05)
            try:
                payload = wire.for_encoding(data, self.encoding)
                await self._server.emit(event, payload, to=self._sid, namespace=NAMESPACE)
            except Exception:
                logger.exception("could not push %s", event)


CHAT = web.AppKey("chat", ChatService)
CHAT_ACCOUNTS = web.AppKey("chat_accounts", AccountService)


class ChatNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    """Looks its services up in the app: they start after the routes are mounted."""

    def __init__(self, app: web.Application) -> None:
        super().__init__(NAMESPACE)
        self._app = app
        self._sessions: dict[str, SioSession] = {}

    @property
    def _chat(self) -> ChatService:
        return self._app[CHAT]

    @property
    def _accounts(self) -> AccountService:
        return self._app[CHAT_ACCOUNTS]

    def session_count(self) -> int:
        return len(self._sessions)

    async def on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        settings = self._chat.settings
        try:
            token, encoding = _connect_auth(auth)
            principal = await self._accounts.authenticate(token)
        except ClientError as exc:
            raise socketio.exceptions.ConnectionRefusedError(wire.error_ack(exc)["error"]) from None
        session = SioSession(
            self.server,
            sid,
            principal,
            token=token,
            encoding=encoding,
            max_queued=settings.max_queued_events,
            bucket=TokenBucket(settings.events_per_second, settings.event_burst),
        )
        self._sessions[sid] = session
        try:
            await self._chat.open_session(session)
        except InfrastructureError:
            self._sessions.pop(sid, None)
            await session.stop()
            raise socketio.exceptions.ConnectionRefusedError(
                {"code": str(ErrorCode.UNAVAILABLE), "status": 503, "detail": "try again"}
            ) from None

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        await session.stop()
        await self._chat.close_session(session)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        data = args[1] if len(args) > 1 else None
        session = self._sessions.get(sid)
        if session is None:
            return wire.error_ack(Unauthenticated("not connected"))
        wait = session.bucket.take()
        if wait:
            return wire.error_ack(rate_limited(wait))
        if event == "auth":
            return await self._reauth(session, data)
        refusal = await self._recheck(session)
        if refusal is not None:
            return refusal
        return await self._chat.handle(session.principal, event, data, session_id=session.id)

    async def _reauth(self, session: SioSession, data: Any) -> dict[str, Any]:
        """A fresh access token for a long-lived connection (after a refresh)."""
        try:
            token, _ = _connect_auth(data, encoding=session.encoding)
            principal = await self._accounts.authenticate(token)
            if principal.user_id != session.principal.user_id:
                raise Unauthenticated("the token is for another user")
        except ClientError as exc:
            return wire.error_ack(exc)
        session.principal, session.token = principal, token
        session.checked_at = time.monotonic()
        return wire.ok()

    async def _recheck(self, session: SioSession) -> dict[str, Any] | None:
        """Logout, disabling and role changes reach open connections within seconds."""
        if time.monotonic() - session.checked_at < AUTH_RECHECK_SECONDS:
            return None
        try:
            session.principal = await self._accounts.authenticate(session.token)
        except Unauthenticated as exc:
            if exc.code is ErrorCode.TOKEN_EXPIRED:
                return wire.error_ack(exc)  # the client sends `auth` with a fresh token
            asyncio.get_running_loop().create_task(session.close(str(exc.code)))
            return wire.error_ack(exc)
        session.checked_at = time.monotonic()
        return None


def _connect_auth(auth: Any, *, encoding: wire.Encoding = "json") -> tuple[str, wire.Encoding]:
    if not isinstance(auth, dict) or not isinstance(auth.get("token"), str):
        raise Unauthenticated("send {token: <access token>} in the connect auth object")
    chosen = auth.get("encoding", encoding)
    if chosen not in wire.ENCODINGS:
        raise Unauthenticated("encoding must be json or msgpack")
    return auth["token"], chosen


def attach_socketio(app: web.Application, settings: ChatSettings) -> socketio.AsyncServer:
    server = socketio.AsyncServer(
        async_mode="aiohttp",
        async_handlers=False,
        max_http_buffer_size=settings.max_frame_bytes,
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        cors_allowed_origins=[],
        logger=False,
        engineio_logger=False,
    )
    server.register_namespace(ChatNamespace(app))
    server.attach(app, socketio_path="socket.io")
    return server
