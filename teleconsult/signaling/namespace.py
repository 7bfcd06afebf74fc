"""Socket.IO namespace ``/signal``: binds sockets to room peers, each event to SignalingService.

Each socket is a realtime :class:`Connection`, tracked by the session guard (a
logout, a disabled account or an expired token closes it with ``bye {"reason"}``,
as on ``/chat``), and may hold one peer in one room at a time. Holding a peer
means being bound to its peer id in the ``/signal`` hub: what the service sends
to that peer, from any process, reaches the socket. Nothing runs per socket
while it is idle: one sweep task per process vouches for the peers held here,
pushes fresh TURN credentials when they are due, and drops peers whose grace
period ended (on any process) every ``SIGNAL_HEARTBEAT_SECONDS``.

Events of one connection are handled one after another (the server runs with
``async_handlers=False``). A socket may lose its peer without an event of its
own (declined, removed, or taken over by a rejoin on another socket); the next
sweep, or its next ``join``, notices and unbinds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import socketio
from aiohttp import web

from teleconsult.core.bus import Bus
from teleconsult.core.errors import (
    BadRequest,
    ClientError,
    ErrorCode,
    FieldError,
    Unauthenticated,
)
from teleconsult.core.settings import ChatSettings
from teleconsult.core.tasks import cancel_and_wait
from teleconsult.realtime import acks
from teleconsult.realtime.connection import Connection
from teleconsult.realtime.guard import SessionGuard
from teleconsult.realtime.hub import Hub
from teleconsult.realtime.namespace import LiveNamespace
from teleconsult.realtime.refusals import EventRefusals, payload_field
from teleconsult.signaling import wire as sw
from teleconsult.signaling.service import SignalingService

logger = logging.getLogger(__name__)

NAMESPACE = "/signal"
# The bus channel of the /signal hub: one subscription per process.
CHANNEL = "tc.signal"
SIGNALING = web.AppKey("signaling", SignalingService)
EVENTS = (
    "join",
    "admit",
    "decline",
    "remove",
    "invite",
    "signal",
    "sfu",
    "record",
    "leave",
    "auth",
)


def signal_hub(server: socketio.AsyncServer, bus: Bus, settings: ChatSettings) -> Hub:
    """The hub that carries events for room peers (address: the peer id)."""
    return Hub(
        server,
        bus,
        namespace=NAMESPACE,
        channel=CHANNEL,
        max_events=settings.max_queued_events,
        max_bytes=settings.max_queued_bytes,
    )


class _Binding:
    """A socket holding a peer: where, under which link, and when its TURN credentials
    are to be refreshed (epoch s)."""

    __slots__ = ("conn", "ice_at", "link", "peer_id", "room_id")

    def __init__(
        self, conn: Connection, room_id: str, peer_id: str, link: str, ice_at: float | None
    ) -> None:
        self.conn = conn
        self.room_id = room_id
        self.peer_id = peer_id
        self.link = link
        self.ice_at = ice_at


class SignalNamespace(LiveNamespace):
    def __init__(
        self,
        *,
        signaling: SignalingService,
        guard: SessionGuard,
        hub: Hub,
        settings: ChatSettings,
        refusals: EventRefusals | None = None,
    ) -> None:
        """``refusals``: where refused events are audited (realtime/refusals.py)."""
        super().__init__(NAMESPACE, guard=guard, hub=hub, settings=settings)
        self._signaling = signaling
        self._refusals = refusals or EventRefusals(None)
        self._bindings: dict[str, _Binding] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="signal-sweep")

    async def stop(self) -> None:
        await cancel_and_wait([self._sweeper])
        self._sweeper = None
        self._bindings.clear()
        self._connections.clear()

    async def _sweep_forever(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._signaling.settings.heartbeat_seconds)
            try:
                await self.sweep()
            except Exception as exc:
                # One line when sweeps start failing, one when they work again.
                if not failing:
                    logger.warning("signal sweep failed (%s); retrying", type(exc).__name__)
                failing = True
            else:
                if failing:
                    logger.info("signal sweep works again")
                failing = False

    async def sweep(self) -> None:
        """Vouch for the peers held here (unbinding sockets that lost theirs), push TURN
        credentials that are due, and drop peers whose time is up. Raises the first
        failure after trying every step."""
        failure: Exception | None = None
        for step in (self._vouch, self._refresh_ice, self._signaling.sweep):
            try:
                await step()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _vouch(self) -> None:
        bindings = list(self._bindings.values())
        lost = await self._signaling.vouch([(b.room_id, b.peer_id, b.link) for b in bindings])
        for i in lost:
            binding = bindings[i]
            if self._bindings.get(binding.conn.sid) is binding:
                self._unbind(binding.conn)

    async def _refresh_ice(self) -> None:
        """Fresh TURN credentials for sockets whose credentials are due within a period."""
        soon = time.time() + self._signaling.settings.heartbeat_seconds
        for binding in list(self._bindings.values()):
            if binding.ice_at is None or binding.ice_at > soon or binding.conn.closing:
                continue
            ice, refresh_at = self._signaling.ice_servers(binding.conn.user_id)
            binding.ice_at = refresh_at
            data = {"ice_servers": ice, "ice_refresh_at": refresh_at}
            await self.emit("ice_servers", data, to=binding.conn.sid)

    # --- connection -------------------------------------------------------------------

    async def closed(self, conn: Connection) -> None:
        binding = self._unbind(conn)
        if binding is None:
            return
        try:
            await self._signaling.disconnected(binding.room_id, binding.peer_id, binding.link)
        except Exception:
            logger.warning("could not record a dropped peer", exc_info=True)

    # --- events -----------------------------------------------------------------------

    async def answer(self, conn: Connection, event: str, data: Any) -> Any:
        try:
            return acks.ok(**await self._handle(conn, event, data))
        except ClientError as exc:
            await self._refused(conn, event, data, exc)
            return acks.error_ack(exc)
        except Exception as exc:
            return acks.failure(exc, f"signal event {event}")

    async def _refused(self, conn: Connection, event: str, data: Any, exc: ClientError) -> None:
        """Audit ``exc`` if the policy refused it: the room (or the invited user) is the target."""
        if event == "invite":
            target_type, target_id = "user", payload_field(data, "user_id")
        elif event == "join":
            target_type, target_id = "room", payload_field(data, "room_id")
        else:
            binding = self._bindings.get(conn.sid)
            target_type, target_id = "room", binding.room_id if binding else None
        await self._refusals.note(
            conn.principal,
            exc,
            via=self.via(conn),
            operation=f"signal.{event}",
            action=f"room.{event}",
            target_type=target_type,
            target_id=target_id,
        )

    async def _handle(self, conn: Connection, event: str, data: Any) -> dict[str, Any]:
        service = self._signaling
        if event == "join":
            return await self._join(conn, data)
        binding = self._bindings.get(conn.sid)
        if binding is None:
            if event not in EVENTS:
                raise ClientError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
            raise ClientError("join a room first", code=ErrorCode.NOT_IN_ROOM)
        room, me = binding.room_id, binding.peer_id
        if event == "signal":
            req_s = acks.parse(sw.SignalRequest, data)
            message = req_s.model_dump(exclude={"to"}, exclude_none=True)
            if len(msgpack.packb(message)) > service.settings.max_message_bytes:
                raise BadRequest(
                    "the signaling message is too large",
                    code=ErrorCode.PAYLOAD_TOO_LARGE,
                    fields=[FieldError("data.sdp", "too large")],
                )
            await service.relay(conn.principal, room, me, req_s.to, message)
            return {}
        if event == "sfu":
            req_sfu = acks.parse(sw.SfuRequest, data)
            if len(req_sfu.sdp or "") > service.settings.max_message_bytes:
                raise BadRequest(
                    "the SDP is too large",
                    code=ErrorCode.PAYLOAD_TOO_LARGE,
                    fields=[FieldError("data.sdp", "too large")],
                )
            return await service.sfu_signal(conn.principal, room, me, req_sfu)
        if event == "record":
            on = acks.parse(sw.RecordRequest, data).on
            return await service.record(conn.principal, room, me, on)
        if event in ("admit", "decline", "remove"):
            target = acks.parse(sw.PeerRequest, data).peer_id
            action: dict[str, Callable[..., Awaitable[None]]] = {
                "admit": service.admit,
                "decline": service.decline,
                "remove": service.remove,
            }
            await action[event](conn.principal, room, me, target)
            return {}
        if event == "invite":
            user_id = acks.parse(sw.InviteRequest, data).user_id
            await service.invite(conn.principal, room, me, user_id)
            return {}
        if event == "leave":
            self._unbind(conn)
            await service.leave(room, me, binding.link)
            return {}
        raise ClientError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")

    async def _join(self, conn: Connection, data: Any) -> dict[str, Any]:
        req = acks.parse(sw.JoinRequest, data)
        held = self._bindings.get(conn.sid)
        if held is not None:
            if await self._signaling.holds(held.room_id, held.peer_id, held.link):
                raise BadRequest("leave the current room first")
            self._unbind(conn)  # sent away, or taken over by a rejoin elsewhere
        heard: list[str] = []

        def listen(peer_id: str) -> None:
            self._hub.bind(peer_id, conn)
            heard.append(peer_id)

        try:
            joined = await self._signaling.join(
                conn.principal, req.room_id, req.peer_id, listen=listen
            )
        except BaseException:
            for peer_id in heard:
                self._hub.unbind(peer_id, conn)
            raise
        peer = joined.peer
        for peer_id in heard:
            if peer_id != peer.peer_id:
                self._hub.unbind(peer_id, conn)
        if conn.closing or self._connections.get(conn.sid) is not conn:
            # It went away while joining: its peer goes into grace like any dropped one.
            self._hub.unbind(peer.peer_id, conn)
            await self._signaling.disconnected(joined.room_id, peer.peer_id, peer.link)
            raise Unauthenticated("not connected")
        refresh_at = joined.answer.get("ice_refresh_at")
        self._bindings[conn.sid] = _Binding(
            conn,
            joined.room_id,
            peer.peer_id,
            peer.link,
            float(refresh_at) if refresh_at else None,
        )
        return joined.answer

    def _unbind(self, conn: Connection) -> _Binding | None:
        binding = self._bindings.pop(conn.sid, None)
        if binding is not None:
            self._hub.unbind(binding.peer_id, conn)
        return binding
