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
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any
from uuid import UUID

import engineio.payload
import socketio
from aiohttp import web

from teleconsult.accounts.service import AccountService
from teleconsult.core.errors import ClientError, ErrorCode, InfrastructureError, Unauthenticated
from teleconsult.core.identity import Principal
from teleconsult.messaging import wire
from teleconsult.messaging.chat import ChatService
from teleconsult.messaging.routes import CHAT
from teleconsult.realtime import acks
from teleconsult.realtime.hub import SLOW_CONSUMER
from teleconsult.realtime.limits import TokenBucket, rate_limited
from teleconsult.realtime.server import connect_auth, refusal

logger = logging.getLogger(__name__)

# python-engineio refuses a long-polling POST of more than 16 packets (and
# drops the client), yet its own client, and others, batch whatever is queued
# into one POST. The byte size of a POST is bounded by CHAT_MAX_FRAME_BYTES; a
# packet count is no extra protection, so allow what a busy client sends.
engineio.payload.Payload.max_decode_packets = max(engineio.payload.Payload.max_decode_packets, 4096)

NAMESPACE = "/chat"
AUTH_RECHECK_SECONDS = 30.0
_MIN_RECHECK_SECONDS = 0.1  # however small the period, an idle check never spins
# Pushed events the engine.io layer may hold for one client beyond our own queue.
_ENGINE_BACKLOG = 16
# What our own queue may hold for one connection, in envelope bytes: the event
# count alone would let 256 large messages (~22 MB of JSON) wait for one reader.
MAX_QUEUED_BYTES = 2 * 1024 * 1024
_EVENT_OVERHEAD = 256  # ids, times and framing around an envelope


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
        self._queued_bytes = 0
        self._writer = asyncio.create_task(self._write(), name=f"sio-writer-{sid}")
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._hub_id = f"sio:{secrets.token_hex(8)}:{sid}"

    @property
    def id(self) -> str:
        return self._hub_id

    @property
    def user_id(self) -> UUID:
        return self.principal.user_id

    def push(self, event: str, data: Mapping[str, Any]) -> bool:
        size = _EVENT_OVERHEAD + len(data.get("envelope") or b"")
        if self._queued_bytes + size > MAX_QUEUED_BYTES:
            return False
        try:
            self._queue.put_nowait((event, data))
        except asyncio.QueueFull:
            return False
        self._queued_bytes += size
        return True

    async def close(self, reason: str) -> None:
        if self._closing:  # every push that fails while closing asks again
            return
        self._closing = True
        if reason == SLOW_CONSUMER:
            logger.info("closing a slow consumer", extra={"sid": self._sid})
        with contextlib.suppress(Exception):
            await self._server.emit("bye", {"reason": reason}, to=self._sid, namespace=NAMESPACE)
        await self._server.disconnect(self._sid, namespace=NAMESPACE)

    def watch(self, check: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``check`` for as long as the connection lives."""
        self._watcher = asyncio.create_task(check(), name=f"sio-watcher-{self._sid}")

    async def stop(self) -> None:
        for task in (self._writer, self._watcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _engine_backlog(self) -> int:
        eio_sid = self._server.manager.eio_sid_from_sid(self._sid, NAMESPACE)
        socket = self._server.eio.sockets.get(eio_sid) if eio_sid else None
        queue = getattr(socket, "queue", None)
        return queue.qsize() if queue is not None else 0

    async def _write(self) -> None:
        while True:
            event, data = await self._queue.get()
            self._queued_bytes -= _EVENT_OVERHEAD + len(data.get("envelope") or b"")
            # Wait (while our own bounded queue fills) rather than pile packets
            # into engine.io's unbounded one.
            # engine.io has no drain event to wait on, so poll the backlog.
            while self._engine_backlog() > _ENGINE_BACKLOG:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            try:
                payload = wire.for_encoding(data, self.encoding)
                await self._server.emit(event, payload, to=self._sid, namespace=NAMESPACE)
            except Exception:
                logger.exception("could not push %s", event)


CHAT_ACCOUNTS = web.AppKey("chat_accounts", AccountService)


class ChatNamespace(socketio.AsyncNamespace):
    """Looks its services up in the app: they start after the routes are mounted."""

    def __init__(self, app: web.Application) -> None:
        super().__init__(NAMESPACE)
        self._app = app
        self._sessions: dict[str, SioSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
            token, encoding = connect_auth(auth)
            principal = await self._accounts.authenticate(token)
        except ClientError as exc:
            raise refusal(acks.error_ack(exc)["error"]) from None
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
            raise refusal(
                {"code": str(ErrorCode.UNAVAILABLE), "status": 503, "detail": "try again"}
            ) from None
        session.watch(lambda: self._watch(session))

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        await session.stop()
        await self._chat.close_session(session)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        sid = args[0]
        # The server's own connect and disconnect come while the sid is pending; a
        # client may also emit events with those names, which must not reach here.
        if event in ("connect", "disconnect") and not self.server.manager.is_connected(
            sid, NAMESPACE
        ):
            return await super().trigger_event(event, *args)
        data = args[1] if len(args) > 1 else None
        session = self._sessions.get(sid)
        if session is None:
            return acks.error_ack(Unauthenticated("not connected"))
        wait = session.bucket.take()
        if wait:
            return acks.error_ack(rate_limited(wait))
        if event == "auth":
            return await self._reauth(session, data)
        refusal = await self._recheck(session)
        if refusal is not None:
            return refusal
        ack = await self._chat.handle(session.principal, event, data, session_id=session.id)
        return wire.ack_for_encoding(event, ack, session.encoding)

    async def _reauth(self, session: SioSession, data: Any) -> dict[str, Any]:
        """A fresh access token for a long-lived connection (after a refresh)."""
        try:
            token, _ = connect_auth(data, encoding=session.encoding)
            principal = await self._accounts.authenticate(token)
            if principal.user_id != session.principal.user_id:
                raise Unauthenticated("the token is for another user")
        except ClientError as exc:
            return acks.error_ack(exc)
        session.principal, session.token = principal, token
        session.checked_at = time.monotonic()
        return acks.ok()

    async def _recheck(self, session: SioSession, *, idle: bool = False) -> dict[str, Any] | None:
        """Logout, disabling and role changes reach open connections within seconds."""
        if time.monotonic() - session.checked_at < AUTH_RECHECK_SECONDS:
            return None
        try:
            session.principal = await self._accounts.authenticate(session.token)
        except Unauthenticated as exc:
            if exc.code is ErrorCode.TOKEN_EXPIRED and not idle:
                return acks.error_ack(exc)  # the client sends `auth` with a fresh token
            self._spawn(session.close(str(exc.code)))
            return acks.error_ack(exc)
        session.checked_at = time.monotonic()
        return None

    async def _watch(self, session: SioSession) -> None:
        """Re-check connections that only receive, too.

        An expired token closes the connection here (the client reconnects with a
        fresh one, or sends ``auth`` in time): an expired token cannot show whether
        its session was ended since, and pushes must stop when it was.
        """
        while True:
            due = session.checked_at + AUTH_RECHECK_SECONDS - time.monotonic()
            await asyncio.sleep(max(due, _MIN_RECHECK_SECONDS))
            try:
                if await self._recheck(session, idle=True) is not None:
                    return
            except Exception:
                logger.warning("could not re-check a chat connection", exc_info=True)
                session.checked_at = time.monotonic()  # try again a period later

    def _spawn(self, coro: Awaitable[None]) -> None:
        # Not a child of the caller: closing cancels the session's own tasks.
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
