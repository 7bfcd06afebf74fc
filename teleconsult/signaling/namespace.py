"""Socket.IO namespace ``/signal``: binds sockets to room peers and forwards events.

Each socket may be one peer in one room at a time. While bound, this process
subscribes to the peer's bus channel and emits what arrives there to the
socket, so the other peers' process does not matter. A dropped socket leaves
its peer in grace (service.disconnected) and a timer here ends it if it does
not come back. Fresh TURN credentials are pushed before the old ones expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import socketio
from aiohttp import web

from teleconsult.api.registry import AUTHENTICATOR, Authenticator
from teleconsult.core.bus import Subscription
from teleconsult.core.errors import (
    BadRequest,
    ClientError,
    ErrorCode,
    FieldError,
    Unauthenticated,
)
from teleconsult.core.identity import Principal
from teleconsult.core.settings import ChatSettings
from teleconsult.realtime import acks
from teleconsult.realtime.limits import TokenBucket, rate_limited
from teleconsult.realtime.server import connect_auth, refusal
from teleconsult.signaling import wire as sw
from teleconsult.signaling.service import SignalingService

logger = logging.getLogger(__name__)

NAMESPACE = "/signal"
SIGNALING = web.AppKey("signaling", SignalingService)
EVENTS = ("join", "admit", "decline", "remove", "invite", "signal", "leave")
# Events that end this socket's place in the room when they arrive for it.
_SENT_AWAY = ("declined", "removed")


@dataclass
class Binding:
    room_id: str
    peer_id: str
    subscription: Subscription
    ice_task: asyncio.Task[None] | None = None


@dataclass
class SignalSocket:
    principal: Principal
    bucket: TokenBucket
    binding: Binding | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SignalNamespace(socketio.AsyncNamespace):
    def __init__(self, app: web.Application, limits: ChatSettings) -> None:
        super().__init__(NAMESPACE)
        self._app = app
        self._limits = limits
        self._sockets: dict[str, SignalSocket] = {}
        self._timers: set[asyncio.Task[None]] = set()
        self._beat: asyncio.Task[None] | None = None

    @property
    def _service(self) -> SignalingService:
        return self._app[SIGNALING]

    @property
    def _accounts(self) -> Authenticator:
        return self._app[AUTHENTICATOR]

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._beat = asyncio.create_task(self._heartbeat(), name="signal-heartbeat")

    async def stop(self) -> None:
        tasks = [*self._timers, *([self._beat] if self._beat else [])]
        for sock in self._sockets.values():
            if sock.binding and sock.binding.ice_task:
                tasks.append(sock.binding.ice_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in list(self._sockets.values()):
            if sock.binding is not None:
                with contextlib.suppress(Exception):
                    await sock.binding.subscription.close()
        self._sockets.clear()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._service.settings.heartbeat_seconds)
            entries = [
                (s.binding.room_id, s.binding.peer_id)
                for s in self._sockets.values()
                if s.binding is not None
            ]
            try:
                await self._service.touch(entries)
            except Exception:
                logger.warning("could not refresh room peers", exc_info=True)

    # --- connection -------------------------------------------------------------------

    async def on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        try:
            token, _ = connect_auth(auth)
            principal = await self._accounts.authenticate(token)
        except ClientError as exc:
            raise refusal(acks.error_ack(exc)["error"]) from None
        limits = self._limits
        bucket = TokenBucket(limits.events_per_second, limits.event_burst)
        self._sockets[sid] = SignalSocket(principal, bucket)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        sock = self._sockets.pop(sid, None)
        if sock is None or sock.binding is None:
            return
        binding = await self._unbind(sock)
        if binding is None:
            return
        try:
            await self._service.disconnected(binding.room_id, binding.peer_id)
        except Exception:
            logger.warning("could not record a dropped peer", exc_info=True)
        service = self._service
        self._later(
            service.settings.grace_seconds + 0.5,
            lambda: service.expire(binding.room_id, binding.peer_id),
        )

    def _later(self, delay: float, job: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            try:
                await job()
            except Exception:
                logger.warning("a delayed room task failed", exc_info=True)

        task = asyncio.create_task(run())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    # --- events -----------------------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid = args[0]
        data = args[1] if len(args) > 1 else None
        sock = self._sockets.get(sid)
        if sock is None:
            return acks.error_ack(Unauthenticated("not connected"))
        wait = sock.bucket.take()
        if wait:
            return acks.error_ack(rate_limited(wait))
        try:
            async with sock.lock:
                result = await self._handle(sid, sock, event, data)
            return acks.ok(**result)
        except ClientError as exc:
            return acks.error_ack(exc)
        except Exception:
            logger.exception("signal event %s failed", event)
            return acks.internal_error_ack()

    async def _handle(self, sid: str, sock: SignalSocket, event: str, data: Any) -> dict[str, Any]:
        service = self._service
        if event == "join":
            req = acks.parse(sw.JoinRequest, data)
            if sock.binding is not None:
                raise BadRequest("leave the current room first")
            heard: list[Subscription] = []

            async def listen(peer_id: str) -> None:
                heard.append(await service.subscribe(peer_id, self._forwarder(sid, sock, peer_id)))

            try:
                joined = await service.join(sock.principal, req.room_id, req.peer_id, listen=listen)
            except BaseException:
                for subscription in heard:
                    with contextlib.suppress(Exception):
                        await subscription.close()
                raise
            self._bind(sid, sock, joined.room_id, joined.peer.peer_id, joined.answer, heard[-1])
            return joined.answer
        binding = sock.binding
        if binding is None:
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
            await service.relay(sock.principal, room, me, req_s.to, message)
            return {}
        if event in ("admit", "decline", "remove"):
            target = acks.parse(sw.PeerRequest, data).peer_id
            action = {"admit": service.admit, "decline": service.decline, "remove": service.remove}
            await action[event](sock.principal, room, me, target)
            return {}
        if event == "invite":
            user_id = acks.parse(sw.InviteRequest, data).user_id
            await service.invite(sock.principal, room, me, user_id)
            return {}
        if event == "leave":
            await self._unbind(sock)
            await service.leave(sock.principal, room, me)
            return {}
        raise ClientError(f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")

    # --- binding a socket to a peer ---------------------------------------------------

    def _forwarder(
        self, sid: str, sock: SignalSocket, peer_id: str
    ) -> Callable[[bytes], Awaitable[None]]:
        """What arrives on the peer's bus channel, emitted to its socket."""

        async def forward(frame: bytes) -> None:
            try:
                decoded = msgpack.unpackb(frame, raw=False)
                event, data = decoded["e"], decoded["d"]
            except (ValueError, KeyError, TypeError, msgpack.ExtraData):
                return
            await self.emit(event, data, to=sid)
            if event in _SENT_AWAY and sock.binding is not None and sock.binding.peer_id == peer_id:
                await self._unbind(sock)

        return forward

    def _bind(
        self,
        sid: str,
        sock: SignalSocket,
        room_id: str,
        peer_id: str,
        answer: dict[str, Any],
        subscription: Subscription,
    ) -> None:
        binding = Binding(room_id, peer_id, subscription)
        refresh_at = answer.get("ice_refresh_at")
        if refresh_at:
            binding.ice_task = asyncio.create_task(self._refresh_ice(sid, sock, float(refresh_at)))
        sock.binding = binding

    async def _unbind(self, sock: SignalSocket) -> Binding | None:
        binding, sock.binding = sock.binding, None
        if binding is None:
            return None
        if binding.ice_task is not None:
            binding.ice_task.cancel()
        with contextlib.suppress(Exception):
            await binding.subscription.close()
        return binding

    async def _refresh_ice(self, sid: str, sock: SignalSocket, at: float) -> None:
        """Send fresh TURN credentials before the ones in use expire."""
        while True:
            await asyncio.sleep(max(1.0, at - time.time()))
            ice, refresh_at = self._service.ice_servers(sock.principal.user_id)
            await self.emit(
                "ice_servers", {"ice_servers": ice, "ice_refresh_at": refresh_at}, to=sid
            )
            if not refresh_at:
                return
            at = float(refresh_at)
