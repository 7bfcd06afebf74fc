"""What every namespace of signed-in users does the same way: ``/chat`` and ``/signal``.

:class:`LiveNamespace` proves the user at connect (the access token in the connect
``auth`` object; a refusal is a ``connect_error`` with ``{code, status, detail}``),
makes each socket a :class:`Connection` tracked by the session guard, charges each
event to the connection's token bucket, refuses events once its token has
expired (``token_expired``) until ``auth`` brings a fresh one, and closes a
connection by saying ``bye {"reason"}`` first. A subclass says what opening and
closing a connection mean to its domain and answers the other events.

Events of one connection arrive one after another (the server runs with
``async_handlers=False``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import socketio

from teleconsult.api.registry import request_ip
from teleconsult.core.errors import ClientError, ErrorCode, Unauthenticated
from teleconsult.core.outages import OUTAGES, is_outage
from teleconsult.core.settings import ChatSettings
from teleconsult.realtime import acks, seam
from teleconsult.realtime.connection import Connection
from teleconsult.realtime.guard import SessionGuard
from teleconsult.realtime.hub import SLOW_CONSUMER, Hub
from teleconsult.realtime.limits import TokenBucket, rate_limited
from teleconsult.realtime.refusals import SOCKETIO, Via
from teleconsult.realtime.server import connect_auth, refusal

logger = logging.getLogger(__name__)


class LiveNamespace(socketio.AsyncNamespace):
    def __init__(
        self, namespace: str, *, guard: SessionGuard, hub: Hub, settings: ChatSettings
    ) -> None:
        super().__init__(namespace)
        self._guard = guard
        self._hub = hub
        self._limits = settings
        self._connections: dict[str, Connection] = {}
        guard.on_close(namespace, self.close)
        hub.on_slow_consumer(self.close)

    def connection_count(self) -> int:
        return len(self._connections)

    def via(self, conn: Connection) -> Via:
        """How ``conn``'s events come, for the refusal audit (the address is looked up late)."""
        return Via(SOCKETIO, functools.partial(self._address, conn.sid))

    def _address(self, sid: str) -> str | None:
        environ = self.server.get_environ(sid, namespace=self.namespace)
        request = environ.get("aiohttp.request") if environ else None
        return request_ip(request) if request is not None else None

    # --- what a subclass says -----------------------------------------------------------

    async def opened(self, conn: Connection) -> None:
        """The connection is accepted; InfrastructureError refuses it (``unavailable``)."""

    async def closed(self, conn: Connection) -> None:
        """The connection is gone (whoever closed it)."""

    async def answer(self, conn: Connection, event: str, data: Any) -> Any:
        """The ack of one event of a connection whose user is proven and current."""
        raise NotImplementedError

    # --- connecting and closing -----------------------------------------------------------

    async def on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        try:
            token, encoding = connect_auth(auth)
            grant = await self._guard.authority.grant(token)
        except ClientError as exc:
            raise refusal(acks.error_ack(exc)["error"]) from None
        except Exception as exc:
            if not is_outage(exc):
                raise
            OUTAGES.down(exc)
            raise refusal(acks.unavailable_error()) from None
        eio = seam.eio_sid(self.server, sid, self.namespace)
        if eio is None:  # the client went away while we checked its token
            raise refusal(acks.error_ack(Unauthenticated("not connected"))["error"])
        conn = Connection(
            sid=sid,
            eio=eio,
            namespace=self.namespace,
            grant=grant,
            encoding=encoding,
            bucket=TokenBucket(self._limits.events_per_second, self._limits.event_burst),
        )
        self._connections[sid] = conn
        try:
            await self.opened(conn)
        except Exception as exc:
            self._connections.pop(sid, None)
            if not is_outage(exc):
                raise
            OUTAGES.down(exc)
            raise refusal(acks.unavailable_error()) from None
        self._guard.track(conn)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self._connections.pop(sid, None)
        if conn is None:
            return
        conn.closing = True
        self._guard.forget(conn)
        await self.closed(conn)

    async def close(self, conn: Connection, reason: str) -> None:
        """Say why, then disconnect. A slow consumer is told ahead of its backlog,
        which is dropped; anyone else after what they have not read yet."""
        conn.closing = True
        self._hub.tell(conn, "bye", {"reason": reason}, first=reason == SLOW_CONSUMER)
        await self.server.disconnect(conn.sid, namespace=self.namespace)

    # --- events ---------------------------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        sid = args[0]
        # The server's own connect and disconnect come while the sid is pending; a
        # client may also emit events with those names, which must not reach here.
        if event in ("connect", "disconnect") and not self.server.manager.is_connected(
            sid, self.namespace
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
        return await self.answer(conn, event, data)

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
