"""The real-time chat service: one entry point for every live transport.

Socket.IO and the MQTT bridge hand each client event to :meth:`ChatService.handle`
and send back the ack it returns; they differ only in how bytes travel. Every
event is checked here: the payload's shape, membership of the thread (through
:class:`MessagingService`), and the per-user typing limit. Stored messages,
receipts, typing and presence go out through the :class:`Hub` to the live
sessions of the thread's members on any server process, and to the message
sinks (the MQTT inboxes, the offline hook) once, from the process that took
the message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from teleconsult.core.errors import ClientError, InfrastructureError, RateLimited
from teleconsult.core.identity import Principal
from teleconsult.core.ratelimit import RateLimiter
from teleconsult.core.settings import ChatSettings
from teleconsult.messaging import wire
from teleconsult.messaging.envelope import DEFAULT_MAX_BYTES, Envelope, to_msgpack
from teleconsult.messaging.records import AppendResult, StoredMessage
from teleconsult.messaging.service import MessagingService
from teleconsult.realtime import acks
from teleconsult.realtime.hub import Hub, Session

logger = logging.getLogger(__name__)

# Called after a message is committed (and again when a retry finds it stored),
# with the thread's current members. Must not raise for one bad recipient.
MessageSink = Callable[[StoredMessage, list[UUID]], Awaitable[None]]

EVENTS = ("send", "resume", "receipt", "typing", "presence")


class ChatService:
    def __init__(
        self,
        *,
        messaging: MessagingService,
        hub: Hub,
        limiter: RateLimiter,
        settings: ChatSettings,
        max_envelope_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._messaging = messaging
        self._hub = hub
        self._limiter = limiter
        self._settings = settings
        self._max_envelope = max_envelope_bytes
        self._sinks: list[MessageSink] = []

    @property
    def settings(self) -> ChatSettings:
        return self._settings

    def add_sink(self, sink: MessageSink) -> None:
        self._sinks.append(sink)

    # --- sessions ---------------------------------------------------------------------

    async def open_session(self, session: Session) -> None:
        """Deliver to ``session`` from now on; tell co-members when its user came online."""
        if await self._hub.attach(session):
            await self._announce(session.user_id, online=True)

    async def close_session(self, session: Session) -> None:
        if await self._hub.detach(session):
            await self._announce(session.user_id, online=False)

    async def _announce(self, user_id: UUID, *, online: bool) -> None:
        try:
            peers = await self._messaging.co_member_ids(user_id)
            await self._hub.publish(peers, "presence", {"user_id": str(user_id), "online": online})
        except (InfrastructureError, OSError):
            logger.warning("could not announce presence", exc_info=True)

    # --- events -----------------------------------------------------------------------

    async def handle(
        self, principal: Principal, event: str, data: object, *, session_id: str | None = None
    ) -> dict[str, Any]:
        """Run one client event; the ack to send back (never raises for client faults)."""
        try:
            if event == "send":
                return await self._send(principal, acks.parse(wire.SendRequest, data), session_id)
            if event == "resume":
                return await self._resume(principal, acks.parse(wire.ResumeRequest, data))
            if event == "receipt":
                return await self._receipt(principal, acks.parse(wire.ReceiptRequest, data))
            if event == "typing":
                return await self._typing(principal, acks.parse(wire.TypingRequest, data))
            if event == "presence":
                return await self._presence(principal, acks.parse(wire.PresenceRequest, data))
            raise ClientError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
        except ClientError as exc:
            return acks.error_ack(exc)
        except Exception:
            logger.exception("chat event %s failed", event)
            return acks.internal_error_ack()

    async def _send(
        self, principal: Principal, req: wire.SendRequest, session_id: str | None
    ) -> dict[str, Any]:
        env = wire.envelope_of(req.envelope, max_bytes=self._max_envelope)
        result = await self.send(principal, req.thread_id, env, skip_session=session_id)
        return acks.ok(
            seq=result.seq,
            duplicate=result.duplicate,
            created_at=result.created_at.isoformat().replace("+00:00", "Z"),
        )

    async def send(
        self,
        principal: Principal,
        thread_id: UUID,
        env: Envelope,
        *,
        skip_session: str | None = None,
    ) -> AppendResult:
        """Store an envelope (every check in MessagingService), then deliver it live.

        The REST send comes here too, so its messages reach live connections."""
        result = await self._messaging.send(principal, thread_id, env)
        stored = StoredMessage(
            thread_id=thread_id,
            seq=result.seq,
            client_msg_id=env.client_msg_id,
            sender_user_id=principal.user_id,
            sender_device_id=env.sender_device_id,
            envelope=to_msgpack(env),
            created_at=result.created_at,
        )
        # Published again for a duplicate too: the first attempt may have died
        # between commit and publish. Receivers drop a seq they already hold.
        await self.fan_out(stored, skip_session=skip_session)
        return result

    async def fan_out(self, stored: StoredMessage, *, skip_session: str | None = None) -> None:
        members = await self._messaging.member_ids(stored.thread_id)
        try:
            await self._hub.publish(
                members, "message", wire.message_data(stored), skip_session=skip_session
            )
        except InfrastructureError:
            # Committed already: readers catch up by resuming.
            logger.warning("live delivery of seq %s failed", stored.seq, exc_info=True)
        for sink in self._sinks:
            try:
                await sink(stored, members)
            except Exception:
                logger.exception("a message sink failed for seq %s", stored.seq)

    async def _resume(self, principal: Principal, req: wire.ResumeRequest) -> dict[str, Any]:
        threads: dict[str, Any] = {}
        for thread_id, after in req.threads.items():
            try:
                page, complete = await self._messaging.history(
                    principal, thread_id, after=after, limit=req.limit
                )
            except ClientError as exc:
                threads[str(thread_id)] = acks.error_ack(exc)
                continue
            threads[str(thread_id)] = acks.ok(
                messages=[wire.message_data(m) for m in page], complete=complete
            )
        return acks.ok(threads=threads)

    async def _receipt(self, principal: Principal, req: wire.ReceiptRequest) -> dict[str, Any]:
        receipt = await self._messaging.mark(
            principal,
            req.thread_id,
            delivered_seq=req.delivered_seq,
            read_seq=req.read_seq,
        )
        data = {
            "thread_id": str(req.thread_id),
            "user_id": str(principal.user_id),
            "delivered_seq": receipt.delivered_seq,
            "read_seq": receipt.read_seq,
        }
        members = await self._messaging.member_ids(req.thread_id)
        await self._hub.publish(members, "receipt", data)
        return acks.ok(delivered_seq=receipt.delivered_seq, read_seq=receipt.read_seq)

    async def _typing(self, principal: Principal, req: wire.TypingRequest) -> dict[str, Any]:
        await self._messaging.ensure_member(principal, req.thread_id)
        decision = await self._limiter.hit(
            f"typing:{principal.user_id}:{req.thread_id}",
            self._settings.typing_per_window,
            self._settings.typing_window,
        )
        if not decision.allowed:
            raise RateLimited(
                "typing notices are limited; send fewer", retry_after=decision.retry_after
            )
        members = await self._messaging.member_ids(req.thread_id)
        others = [m for m in members if m != principal.user_id]
        data = {
            "thread_id": str(req.thread_id),
            "user_id": str(principal.user_id),
            "typing": req.typing,
        }
        await self._hub.publish(others, "typing", data)
        return acks.ok()

    async def _presence(self, principal: Principal, req: wire.PresenceRequest) -> dict[str, Any]:
        await self._messaging.ensure_member(principal, req.thread_id)
        members = await self._messaging.member_ids(req.thread_id)
        online = await self._hub.online(members)
        return acks.ok(online=sorted(str(u) for u in online))
