"""The real-time chat service: one entry point for every live transport.

Socket.IO (``/chat``) and the MQTT bridge hand each client event to
:meth:`ChatService.handle` and send back the ack it returns; they differ only in
how bytes travel. Every event is checked here (the payload's shape; membership
and the envelope through :class:`MessagingService`; the per-user typing limit).

A stored message is acknowledged as soon as it is committed. Delivery is off the
ack's path: one hub publish per message (``tc.chat`` carries one frame for all
members to every other process) and the message sinks (the MQTT inboxes, the
offline hook), each fed by its own worker in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from teleconsult.core.errors import ClientError, InfrastructureError, RateLimited
from teleconsult.core.identity import Principal
from teleconsult.core.policy import Action
from teleconsult.core.ratelimit import RateLimiter
from teleconsult.core.settings import ChatSettings
from teleconsult.core.tasks import cancel_and_wait
from teleconsult.messaging import wire
from teleconsult.messaging.envelope import Envelope
from teleconsult.messaging.message_store import Page, PageRequest
from teleconsult.messaging.records import AppendResult, StoredMessage
from teleconsult.messaging.service import MessagingService, Sent
from teleconsult.realtime import acks
from teleconsult.realtime.connection import Connection
from teleconsult.realtime.hub import Hub
from teleconsult.realtime.presence import Presence
from teleconsult.realtime.refusals import EventRefusals, Via, payload_field

logger = logging.getLogger(__name__)

# Called after a message is committed (and again when a retry finds it stored),
# with the thread's current members. Must not raise for one bad recipient.
MessageSink = Callable[[StoredMessage, list[UUID]], Awaitable[None]]

EVENTS = ("send", "resume", "receipt", "typing", "presence")
_MAX_SINK_BACKLOG = 10_000


class _SinkWorker:
    """Feeds one sink in arrival order, off the ack's path; bounded (oldest dropped)."""

    def __init__(self, sink: MessageSink) -> None:
        self._sink = sink
        self._queue: deque[tuple[StoredMessage, list[UUID]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chat-sink")

    async def close(self) -> None:
        await cancel_and_wait([self._task])

    def offer(self, message: StoredMessage, members: list[UUID]) -> None:
        if len(self._queue) >= _MAX_SINK_BACKLOG:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("a message sink is behind; %d messages skipped", self.dropped)
        self._queue.append((message, members))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            message, members = self._queue.popleft()
            try:
                await self._sink(message, members)
            except Exception:
                logger.exception("a message sink failed for seq %s", message.seq)


class ChatService:
    def __init__(
        self,
        *,
        messaging: MessagingService,
        hub: Hub,
        presence: Presence,
        limiter: RateLimiter,
        settings: ChatSettings,
        refusals: EventRefusals | None = None,
    ) -> None:
        """``refusals``: where refused events are audited (realtime/refusals.py)."""
        self._messaging = messaging
        self._hub = hub
        self._presence = presence
        self._limiter = limiter
        self._settings = settings
        self._refusals = refusals or EventRefusals(None)
        self._sinks: list[_SinkWorker] = []
        self._beat: asyncio.Task[None] | None = None

    @property
    def settings(self) -> ChatSettings:
        return self._settings

    @property
    def hub(self) -> Hub:
        return self._hub

    def add_sink(self, sink: MessageSink) -> None:
        worker = _SinkWorker(sink)
        self._sinks.append(worker)
        if self._beat is not None:
            worker.start()

    async def start(self) -> None:
        for worker in self._sinks:
            worker.start()
        self._beat = asyncio.create_task(self._keep_present(), name="chat-presence")

    async def close(self) -> None:
        await cancel_and_wait([self._beat])
        for worker in self._sinks:
            await worker.close()

    # --- sessions ---------------------------------------------------------------------

    async def open_session(self, conn: Connection) -> None:
        """Deliver to ``conn`` from now on; tell co-members when its user came online.

        Raises InfrastructureError (and delivers nothing) when presence is down.
        """
        self._hub.bind(str(conn.user_id), conn)
        try:
            came_online = await self._presence.connected(conn.user_id, conn.sid)
        except InfrastructureError:
            self._hub.unbind(str(conn.user_id), conn)
            raise
        if came_online:
            await self._announce(conn.user_id, online=True)

    async def close_session(self, conn: Connection) -> None:
        self._hub.unbind(str(conn.user_id), conn)
        try:
            went_offline = await self._presence.disconnected(conn.user_id, conn.sid)
        except InfrastructureError:
            logger.warning("presence could not record a disconnect", exc_info=True)
            return
        if went_offline:
            await self._announce(conn.user_id, online=False)

    async def device_online(self, user_id: UUID, conn_id: str) -> None:
        """A connection of a transport the hub does not hold (MQTT) is live.

        It counts for ``presence_ttl`` seconds from now: its transport calls this
        again before then to keep it. Raises InfrastructureError when presence is down.
        """
        if await self._presence.connected(user_id, conn_id):
            await self._announce(user_id, online=True)

    async def device_offline(self, user_id: UUID, conn_id: str) -> None:
        """That connection ended; raises InfrastructureError when presence is down."""
        if await self._presence.disconnected(user_id, conn_id):
            await self._announce(user_id, online=False)

    async def _announce(self, user_id: UUID, *, online: bool) -> None:
        try:
            peers = await self._messaging.co_member_ids(
                user_id, max_thread_size=self._settings.presence_news_max_members
            )
        except (InfrastructureError, OSError):
            logger.warning("could not announce presence", exc_info=True)
            return
        self._publish(peers, "presence", {"user_id": str(user_id), "online": online})

    async def _keep_present(self) -> None:
        while True:
            await asyncio.sleep(self._settings.presence_ttl / 3)
            entries = (
                (c.user_id, c.sid) for a in self._hub.addresses() for c in self._hub.local(a)
            )
            try:
                await self._presence.refresh(entries)
            except InfrastructureError:
                logger.warning("presence refresh failed", exc_info=True)

    async def online(self, user_ids: list[UUID]) -> set[UUID]:
        return await self._presence.online(user_ids)

    # --- events -----------------------------------------------------------------------

    async def handle(
        self, principal: Principal, event: str, data: object, *, via: Via, skip: str | None = None
    ) -> dict[str, Any]:
        """Run one client event; the ack to send back (never raises for client faults).

        ``via`` is the transport it came by: a refusal is audited naming it.
        ``skip`` is the connection the event came on: its own message is not pushed
        back to it.
        """
        try:
            if event == "send":
                return await self._send(principal, acks.parse(wire.SendRequest, data), skip)
            if event == "resume":
                req = acks.parse(wire.ResumeRequest, data)
                return await self._resume(principal, req, via)
            if event == "receipt":
                return await self._receipt(principal, acks.parse(wire.ReceiptRequest, data))
            if event == "typing":
                return await self._typing(principal, acks.parse(wire.TypingRequest, data))
            if event == "presence":
                return await self._presence_of(principal, acks.parse(wire.PresenceRequest, data))
            raise ClientError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
        except ClientError as exc:
            await self._refused(principal, event, exc, via, payload_field(data, "thread_id"))
            return acks.error_ack(exc)
        except Exception as exc:
            return acks.failure(exc, f"chat event {event}")

    async def _refused(
        self, principal: Principal, event: str, exc: ClientError, via: Via, thread_id: object
    ) -> None:
        """Audit ``exc`` if the policy refused it (not for malformed or missing things)."""
        await self._refusals.note(
            principal,
            exc,
            via=via,
            operation=f"chat.{event}",
            action=Action.MESSAGE_SEND if event == "send" else Action.THREAD_READ,
            target_type="thread",
            target_id=thread_id,
        )

    async def _send(
        self, principal: Principal, req: wire.SendRequest, skip: str | None
    ) -> dict[str, Any]:
        env = wire.envelope_of(req.envelope, max_bytes=self._settings.max_envelope_bytes)
        result = await self.send(principal, req.thread_id, env, skip=skip)
        return acks.ok(
            seq=result.seq,
            duplicate=result.duplicate,
            created_at=result.created_at.isoformat().replace("+00:00", "Z"),
        )

    async def send(
        self, principal: Principal, thread_id: UUID, env: Envelope, *, skip: str | None = None
    ) -> AppendResult:
        """Store an envelope (every check in MessagingService), then deliver it live.

        The REST send comes here too, so its messages reach live connections."""
        sent = await self._messaging.send(principal, thread_id, env)
        # Published again for a duplicate too: the first attempt may have died
        # between commit and publish. Receivers drop a seq they already hold.
        self.fan_out(sent, skip=skip)
        return sent.result

    def fan_out(self, sent: Sent, *, skip: str | None = None) -> None:
        members = list(sent.members)
        self._publish(members, "message", wire.message_data(sent.message), skip=skip)
        for worker in self._sinks:
            worker.offer(sent.message, members)

    def _publish(
        self,
        user_ids: Any,
        event: str,
        data: dict[str, Any],
        *,
        skip: str | None = None,
    ) -> None:
        self._hub.publish((str(u) for u in user_ids), event, data, skip=skip)

    async def _resume(
        self, principal: Principal, req: wire.ResumeRequest, via: Via
    ) -> dict[str, Any]:
        requests = [PageRequest(t, after, req.limit) for t, after in req.threads.items()]
        pages = await self._messaging.read(principal, requests)
        threads: dict[str, Any] = {}
        for request, page in zip(requests, pages, strict=True):
            if isinstance(page, Page):
                threads[str(request.thread_id)] = acks.ok(
                    messages=[wire.message_data(m) for m in page.messages],
                    complete=page.complete,
                )
            else:
                await self._refused(principal, "resume", page, via, str(request.thread_id))
                threads[str(request.thread_id)] = acks.error_ack(page)
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
        self._publish(await self._messaging.members(req.thread_id), "receipt", data)
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
        members = await self._messaging.members(req.thread_id)
        others = [m for m in members if m != principal.user_id]
        data = {
            "thread_id": str(req.thread_id),
            "user_id": str(principal.user_id),
            "typing": req.typing,
        }
        self._publish(others, "typing", data)
        return acks.ok()

    async def _presence_of(self, principal: Principal, req: wire.PresenceRequest) -> dict[str, Any]:
        await self._messaging.ensure_member(principal, req.thread_id)
        members = await self._messaging.member_ids(req.thread_id)
        online = await self._presence.online(members)
        return acks.ok(online=sorted(str(u) for u in online))
