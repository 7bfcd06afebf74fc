"""Consultation rooms: who may join, the waiting room, relaying, reconnect grace.

Transport-free: the Socket.IO namespace (namespace.py) binds a socket to a
peer and forwards events; everything that decides lives here. Events for a
peer go through the bus channel ``tc.peer.<peer id>``, so peers of one room
reach each other whichever server process holds their socket. The room
itself (who is in, waiting or admitted, connected or in grace) is in the
shared :class:`RoomRegistry`.

Rules:
* Only the appointment's doctor and patient, and users the doctor invited,
  may join, only inside the join window, and only while the consultation is
  neither ended nor cancelled. Anyone else gets ``not_found`` (the room's
  existence is not confirmed to outsiders).
* The doctor is admitted at once; everyone else waits until the doctor
  admits them. The doctor sees who waits, with their last network test.
* A peer-to-peer room holds ``max_p2p_peers``; past that, ``sfu_required``.
  The doctor is never turned away from their own room.
* A peer whose socket drops keeps its place for ``grace_seconds`` and comes
  back with the same peer id (``reconnected``); the others are told both
  times and do an ICE restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgpack

from teleconsult.accounts import store as accounts
from teleconsult.core.bus import Bus, Handler, Subscription
from teleconsult.core.errors import Conflict, ErrorCode, Forbidden, NotFound
from teleconsult.core.identity import Principal
from teleconsult.core.settings import SignalSettings
from teleconsult.signaling import store
from teleconsult.signaling.rooms import Peer, RoomRegistry, RoomRole, Status, new_peer_id

logger = logging.getLogger(__name__)

# ICE servers (RTCIceServer dicts) for a user, and when to send fresh ones (epoch s).
IceProvider = Callable[[UUID], tuple[list[dict[str, Any]], float | None]]
# The user's latest pre-call network result for an appointment, for the doctor.
NetworkLookup = Callable[[UUID, UUID], Awaitable[Mapping[str, Any] | None]]


def channel(peer_id: str) -> str:
    return f"tc.peer.{peer_id}"


def polite(me: str, other: str) -> bool:
    """Perfect negotiation: of any two peers, the one with the greater id is polite."""
    return me > other


@dataclass(frozen=True)
class Joined:
    room_id: str
    peer: Peer
    answer: dict[str, Any]
    rejoined: bool


class SignalingService:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        rooms: RoomRegistry,
        bus: Bus,
        settings: SignalSettings,
        ice: IceProvider | None = None,
        network: NetworkLookup | None = None,
    ) -> None:
        self._pool = pool
        self._rooms = rooms
        self._bus = bus
        self._settings = settings
        self._ice: IceProvider = ice or (lambda _user: ([], None))
        self._network = network

    @property
    def settings(self) -> SignalSettings:
        return self._settings

    def ice_servers(self, user_id: UUID) -> tuple[list[dict[str, Any]], float | None]:
        return self._ice(user_id)

    async def subscribe(self, peer_id: str, handler: Handler) -> Subscription:
        """Receive what is sent to ``peer_id`` (its socket is on this process)."""
        return await self._bus.subscribe(channel(peer_id), handler)

    async def notify(self, peer_ids: Iterable[str], event: str, data: Mapping[str, Any]) -> None:
        frame = msgpack.packb({"e": event, "d": dict(data)}, use_bin_type=True)
        for peer_id in dict.fromkeys(peer_ids):
            await self._bus.publish(channel(peer_id), frame)

    # --- access -----------------------------------------------------------------------

    async def _access(
        self, principal: Principal, room_id: str
    ) -> tuple[store.RoomAccess, RoomRole]:
        access = await store.room_access(self._pool, room_id)
        if access is None or access.clinic_id != principal.clinic_id:
            raise NotFound("room not found")
        role: RoomRole
        if principal.user_id == access.doctor_id:
            role = "doctor"
        elif principal.user_id == access.patient_id:
            role = "patient"
        elif await store.is_invited(self._pool, access.consultation_id, principal.user_id):
            role = "guest"
        else:
            raise NotFound("room not found")
        now = datetime.now(UTC)
        closed = access.consultation_status in (
            "ended",
            "cancelled",
        ) or access.appointment_status in (
            "cancelled",
            "completed",
            "no_show",
        )
        if closed or not access.join_opens_at <= now < access.join_closes_at:
            raise Forbidden(
                "the room is open from "
                f"{access.join_opens_at.isoformat()} to {access.join_closes_at.isoformat()}"
                + (" and this consultation is over" if closed else ""),
                code=ErrorCode.OUTSIDE_JOIN_WINDOW,
            )
        return access, role

    # --- joining and leaving ----------------------------------------------------------

    async def join(
        self,
        principal: Principal,
        room_id: str,
        peer_id: str | None,
        *,
        listen: Callable[[str], Awaitable[None]] | None = None,
    ) -> Joined:
        """Enter the room (or come back to one's peer within the grace period).

        ``listen(peer_id)`` is awaited once the peer id is settled and before
        anyone is told about the peer, so its socket hears every answer to its
        arrival (``admitted``, offers) even when the bus needs a round trip to
        subscribe."""
        access, role = await self._access(principal, room_id)
        now = time.time()
        async with self._rooms.locked(room_id):
            peers = await self._pruned(room_id, access, now)
            mine = peers.get(peer_id) if peer_id else None
            if mine is not None and mine.user_id == principal.user_id:
                peer = replace(mine, connected=True, grace_until=None, seen=now)
                if listen is not None:
                    await listen(peer.peer_id)
                await self._rooms.put(room_id, peer)
                others = [p for p in peers.values() if p.peer_id != peer.peer_id]
                if peer.status == "admitted":
                    await self.notify(
                        self._admitted(others), "peer_reconnected", {"peer_id": peer.peer_id}
                    )
                await self._record(access, "reconnected", peer)
                return Joined(room_id, peer, self._answer(peer, others), rejoined=True)
            # A new peer of this user replaces any older one (an app restart, a new tab).
            for old in [p for p in peers.values() if p.user_id == principal.user_id]:
                await self._drop(room_id, access, old, peers, kind="left")
                del peers[old.peer_id]
            if role != "doctor" and len(peers) >= self._settings.max_p2p_peers:
                raise Conflict(
                    f"this call already has {len(peers)} people; more need the SFU",
                    code=ErrorCode.SFU_REQUIRED,
                )
            status: Status = "admitted" if role == "doctor" else "waiting"
            peer = Peer(
                peer_id=new_peer_id(),
                user_id=principal.user_id,
                role=role,
                status=status,
                connected=True,
                joined_at=now,
                seen=now,
            )
            if listen is not None:
                await listen(peer.peer_id)
            await self._rooms.put(room_id, peer)
            others = list(peers.values())
            if status == "waiting":
                await self._record(access, "waiting", peer)
                doctors = [
                    p.peer_id for p in others if p.role == "doctor" and p.status == "admitted"
                ]
                await self.notify(doctors, "waiting", await self._waiting_view(access, peer))
            else:
                await self._record(access, "joined", peer)
                await self._announce_admitted(room_id, access, peer, others)
            return Joined(room_id, peer, self._answer(peer, others), rejoined=False)

    def _answer(self, peer: Peer, others: list[Peer]) -> dict[str, Any]:
        ice, refresh_at = self._ice(peer.user_id)
        visible = others if peer.role == "doctor" else [p for p in others if p.status == "admitted"]
        if peer.status != "admitted":
            visible = []
        return {
            "peer_id": peer.peer_id,
            "role": peer.role,
            "status": peer.status,
            "peers": [self._view(peer, p) for p in visible],
            "ice_servers": ice,
            "ice_refresh_at": refresh_at,
            "grace_seconds": self._settings.grace_seconds,
            "max_peers": self._settings.max_p2p_peers,
        }

    def _view(self, me: Peer, other: Peer) -> dict[str, Any]:
        view: dict[str, Any] = {
            "peer_id": other.peer_id,
            "role": other.role,
            "status": other.status,
            "connected": other.connected,
            "polite": polite(me.peer_id, other.peer_id),
        }
        if me.role == "doctor":
            view["user_id"] = str(other.user_id)
        return view

    async def _waiting_view(self, access: store.RoomAccess, peer: Peer) -> dict[str, Any]:
        result = None
        if self._network is not None:
            try:
                result = await self._network(access.appointment_id, peer.user_id)
            except Exception:
                logger.warning("network test lookup failed", exc_info=True)
        return {
            "peer_id": peer.peer_id,
            "role": peer.role,
            "user_id": str(peer.user_id),
            "network_test": dict(result) if result is not None else None,
        }

    @staticmethod
    def _admitted(peers: Iterable[Peer]) -> list[str]:
        return [p.peer_id for p in peers if p.status == "admitted"]

    async def _announce_admitted(
        self, room_id: str, access: store.RoomAccess, peer: Peer, others: list[Peer]
    ) -> None:
        for other in others:
            if other.status == "admitted":
                await self.notify([other.peer_id], "peer_joined", self._view(other, peer))
        if sum(1 for p in others if p.status == "admitted") >= 1 and await store.mark_open(
            self._pool, access.consultation_id
        ):
            await store.record(self._pool, access.consultation_id, "started")

    async def leave(self, principal: Principal, room_id: str, peer_id: str) -> None:
        access = await store.room_access(self._pool, room_id)
        if access is None:
            return
        async with self._rooms.locked(room_id):
            peers = await self._rooms.peers(room_id)
            peer = peers.get(peer_id)
            if peer is None or peer.user_id != principal.user_id:
                return
            await self._drop(room_id, access, peer, peers, kind="left")

    async def _drop(
        self,
        room_id: str,
        access: store.RoomAccess,
        peer: Peer,
        peers: Mapping[str, Peer],
        *,
        kind: str,
    ) -> None:
        await self._rooms.remove(room_id, peer.peer_id)
        await self._record(access, kind, peer)
        rest = [p for p in peers.values() if p.peer_id != peer.peer_id]
        if peer.status == "admitted":
            await self.notify(self._admitted(rest), "peer_left", {"peer_id": peer.peer_id})
        else:
            doctors = [p.peer_id for p in rest if p.role == "doctor"]
            await self.notify(doctors, "waiting_left", {"peer_id": peer.peer_id})
        if not rest:
            await store.record(self._pool, access.consultation_id, "ended")

    async def _record(self, access: store.RoomAccess, kind: str, peer: Peer) -> None:
        await store.record(
            self._pool,
            access.consultation_id,
            kind,
            user_id=peer.user_id,
            role=peer.role,
            peer_id=peer.peer_id,
        )

    async def _pruned(self, room_id: str, access: store.RoomAccess, now: float) -> dict[str, Peer]:
        """The room without peers whose grace ran out or whose process went quiet."""
        peers = await self._rooms.peers(room_id)
        quiet = now - 3 * self._settings.heartbeat_seconds
        for peer in list(peers.values()):
            expired = (
                not peer.connected and peer.grace_until is not None and peer.grace_until <= now
            )
            if expired or peer.seen < quiet:
                await self._drop(room_id, access, peer, peers, kind="left")
                del peers[peer.peer_id]
        return peers

    # --- the doctor's controls --------------------------------------------------------

    async def _doctor_in(
        self, principal: Principal, room_id: str, peer_id: str
    ) -> tuple[store.RoomAccess, dict[str, Peer], Peer]:
        access = await store.room_access(self._pool, room_id)
        if access is None:
            raise NotFound("room not found")
        peers = await self._rooms.peers(room_id)
        me = peers.get(peer_id)
        if me is None or me.user_id != principal.user_id:
            raise Conflict("join the room first", code=ErrorCode.NOT_IN_ROOM)
        if me.role != "doctor":
            raise Forbidden("only the consultation's doctor may do that")
        return access, peers, me

    async def admit(self, principal: Principal, room_id: str, peer_id: str, target: str) -> None:
        async with self._rooms.locked(room_id):
            access, peers, me = await self._doctor_in(principal, room_id, peer_id)
            peer = peers.get(target)
            if peer is None:
                raise NotFound("nobody with that peer id is in the room")
            if peer.status == "admitted":
                return
            admitted = [p for p in peers.values() if p.status == "admitted"]
            if len(admitted) >= self._settings.max_p2p_peers:
                raise Conflict(
                    "the peer-to-peer call is full; more need the SFU", code=ErrorCode.SFU_REQUIRED
                )
            peer = replace(peer, status="admitted")
            await self._rooms.put(room_id, peer)
            await self._record(access, "admitted", peer)
            others = [p for p in peers.values() if p.peer_id != peer.peer_id]
            await self.notify([peer.peer_id], "admitted", self._answer(peer, others))
            await self._announce_admitted(room_id, access, peer, others)

    async def decline(self, principal: Principal, room_id: str, peer_id: str, target: str) -> None:
        await self._send_away(principal, room_id, peer_id, target, kind="declined")

    async def remove(self, principal: Principal, room_id: str, peer_id: str, target: str) -> None:
        await self._send_away(principal, room_id, peer_id, target, kind="removed")

    async def _send_away(
        self, principal: Principal, room_id: str, peer_id: str, target: str, *, kind: str
    ) -> None:
        async with self._rooms.locked(room_id):
            access, peers, me = await self._doctor_in(principal, room_id, peer_id)
            peer = peers.get(target)
            if peer is None or peer.peer_id == me.peer_id:
                raise NotFound("nobody else with that peer id is in the room")
            await self.notify([peer.peer_id], kind, {"by": me.peer_id})
            await self._drop(room_id, access, peer, peers, kind=kind)

    async def invite(self, principal: Principal, room_id: str, peer_id: str, user_id: UUID) -> None:
        access, _, _ = await self._doctor_in(principal, room_id, peer_id)
        user = await accounts.get_user(self._pool, user_id)
        if user is None or user.clinic_id != access.clinic_id:
            raise NotFound("user not found")
        await store.invite(self._pool, access.consultation_id, user_id, principal.user_id)
        await store.record(
            self._pool, access.consultation_id, "invited", user_id=user_id, role=user.role.value
        )

    # --- relay ------------------------------------------------------------------------

    async def relay(
        self, principal: Principal, room_id: str, peer_id: str, target: str, message: dict[str, Any]
    ) -> None:
        peers = await self._rooms.peers(room_id)
        me = peers.get(peer_id)
        if me is None or me.user_id != principal.user_id:
            raise Conflict("join the room first", code=ErrorCode.NOT_IN_ROOM)
        if me.status != "admitted":
            raise Forbidden("wait until the doctor admits you", code=ErrorCode.NOT_ADMITTED)
        other = peers.get(target)
        if other is None or other.status != "admitted" or other.peer_id == me.peer_id:
            raise NotFound("no admitted peer with that id in this room")
        await self.notify([target], "signal", {"from": peer_id, **message})

    # --- connection loss --------------------------------------------------------------

    async def disconnected(self, room_id: str, peer_id: str) -> None:
        """The socket dropped: keep the place for the grace period and tell the others."""
        async with self._rooms.locked(room_id):
            peers = await self._rooms.peers(room_id)
            peer = peers.get(peer_id)
            if peer is None:
                return
            until = time.time() + self._settings.grace_seconds
            await self._rooms.put(room_id, replace(peer, connected=False, grace_until=until))
            access = await store.room_access(self._pool, room_id)
            if access is not None:
                await self._record(access, "disconnected", peer)
            rest = [p for p in peers.values() if p.peer_id != peer_id]
            if peer.status == "admitted":
                await self.notify(self._admitted(rest), "peer_disconnected", {"peer_id": peer_id})

    async def expire(self, room_id: str, peer_id: str) -> None:
        """After the grace period: drop the peer unless it came back."""
        access = await store.room_access(self._pool, room_id)
        if access is None:
            return
        async with self._rooms.locked(room_id):
            peers = await self._rooms.peers(room_id)
            peer = peers.get(peer_id)
            if peer is None or peer.connected:
                return
            if peer.grace_until is not None and peer.grace_until > time.time():
                return
            await self._drop(room_id, access, peer, peers, kind="left")

    async def touch(self, entries: list[tuple[str, str]]) -> None:
        await self._rooms.touch(entries, time.time())

    async def events(self, room_id: str) -> list[store.RoomEvent]:
        access = await store.room_access(self._pool, room_id)
        return [] if access is None else await store.events(self._pool, access.consultation_id)
