"""Consultation rooms: who may join, the waiting room, relaying, reconnect grace.

Transport-free: the Socket.IO namespace (namespace.py) binds a socket to a peer
and forwards events; everything that decides lives here. Events for peers leave
through the :class:`Outbox` (the ``/signal`` hub), addressed by peer id, and
reach the peer's socket on whichever server process holds it. The room itself
(who is in, waiting or admitted, connected or in grace) is in the shared
:class:`RoomRegistry`, changed by one atomic step per operation.

Rules:
* Only the appointment's doctor and patient, and users the doctor invited,
  may join, only inside the join window, and only while the consultation is
  neither ended nor cancelled. Anyone else gets ``not_found`` (the room's
  existence is not confirmed to outsiders).
* The doctor is admitted at once; everyone else waits until the doctor
  admits them. The doctor sees who waits, with their last network test.
* A peer-to-peer room holds ``max_p2p_peers``; past that, ``sfu_required``.
  With an SFU (sfu_bridge.py) a room moves to it at its third admission and holds
  ``sfu_max_peers``; removals go through the SFU too.
  The doctor is never turned away from their own room.
* A peer whose socket drops keeps its place for ``grace_seconds`` and comes
  back with the same peer id (``reconnected``); the others are told both
  times and do an ICE restart. Peers whose grace ended, or whose process
  stopped vouching for them, are dropped by :meth:`SignalingService.sweep`.

A join costs two statements on one database connection (access with the
invitation; the room events with the consultation's opening) and one registry
step; the waiting patient's network test is read only when a doctor is there to
be told (tests/test_signaling_costs.py counts them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from teleconsult.accounts import store as accounts
from teleconsult.core.batching import Batcher
from teleconsult.core.errors import Conflict, ErrorCode, Forbidden, NotFound
from teleconsult.core.identity import Principal
from teleconsult.core.policy import OutOfScope
from teleconsult.core.settings import SignalSettings
from teleconsult.signaling import store
from teleconsult.signaling.rooms import (
    Change,
    Peer,
    PeerRef,
    RoomRegistry,
    RoomRole,
    new_link,
    new_peer_id,
)
from teleconsult.signaling.sfu_bridge import SfuBridge
from teleconsult.signaling.store import NewEvent

# Room events to record: room id, events in order, whether to open the consultation.
Record = tuple[str, Sequence[NewEvent], bool]

logger = logging.getLogger(__name__)

# ICE servers (RTCIceServer dicts) for a user, and when to send fresh ones (epoch s).
IceProvider = Callable[[UUID], tuple[list[dict[str, Any]], float | None]]
# The user's latest pre-call network result for an appointment, for the doctor.
NetworkLookup = Callable[[UUID, UUID], Awaitable[Mapping[str, Any] | None]]
# Called with a peer id before anyone can learn of that peer (its socket listens).
Listen = Callable[[str], None]
# payments (issue 15): (appointment, clinic) -> raises PaymentRequired while unpaid.
PaymentGate = Callable[[UUID, UUID], Awaitable[None]]


class Outbox(Protocol):
    """Where events for peers go (the /signal hub): to every socket bound to a peer
    id, on any server process. Never blocks."""

    def publish(self, addresses: Iterable[str], event: str, data: Mapping[str, Any]) -> None: ...


def polite(me: str, other: str) -> bool:
    """Perfect negotiation: of any two peers, the one with the greater id is polite."""
    return me > other


@dataclass(frozen=True)
class Joined:
    room_id: str
    peer: Peer
    answer: dict[str, Any]
    rejoined: bool


def _event(kind: str, peer: Peer) -> NewEvent:
    return NewEvent(kind, peer.user_id, peer.role, peer.peer_id)


def _admitted(peers: Iterable[Peer]) -> list[Peer]:
    return [p for p in peers if p.status == "admitted"]


class SignalingService:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        rooms: RoomRegistry,
        outbox: Outbox,
        settings: SignalSettings,
        ice: IceProvider | None = None,
        network: NetworkLookup | None = None,
        sfu: SfuBridge | None = None,
        sfu_max_peers: int = 8,
        gate: PaymentGate | None = None,  # payments (issue 15)
    ) -> None:
        self._pool = pool
        self._gate = gate  # payments (issue 15): raises payment_required under pay_before
        # With an SFU a room leaves peer-to-peer at its third admission (sfu_bridge.py)
        # and holds up to ``sfu_max_peers``; without, ``max_p2p_peers``.
        self._sfu = sfu
        self._max_peers = sfu_max_peers if sfu is not None else settings.max_p2p_peers
        self._rooms = rooms
        self._outbox = outbox
        self._settings = settings
        self._ice: IceProvider = ice or (lambda _user: ([], None))
        self._network = network
        # Joins, leaves and drops at once share their access reads and event writes.
        batch, inflight = settings.db_batch, settings.db_inflight
        self._access: Batcher[tuple[str, UUID], store.RoomAccess | None] = Batcher(
            self._read_access, max_batch=batch, max_inflight=inflight, name="signal-access"
        )
        self._records: Batcher[Record, None] = Batcher(
            self._write_records, max_batch=batch, max_inflight=inflight, name="signal-record"
        )

    async def close(self) -> None:
        """Wait for the room events still being written."""
        await self._records.close()
        await self._access.close()
        if self._sfu is not None:
            await self._sfu.close()

    async def _read_access(self, asks: Sequence[tuple[str, UUID]]) -> list[store.RoomAccess | None]:
        async with self._pool.acquire() as conn:
            return await store.room_access_many(conn, asks)

    async def _write_records(self, items: Sequence[Record]) -> list[None]:
        async with self._pool.acquire() as conn:
            try:
                await store.record_many(conn, items)
            except asyncpg.PostgresError:
                # One bad item must not lose the others' events: one at a time.
                if len(items) == 1:
                    raise
                for room_id, events, open_if in items:
                    await store.record(conn, room_id, events, open_if=open_if)
        return [None] * len(items)

    async def _record(
        self, room_id: str, events: Sequence[NewEvent], *, open_if: bool = False
    ) -> None:
        if events or open_if:
            await self._records.submit((room_id, events, open_if))

    @property
    def settings(self) -> SignalSettings:
        return self._settings

    def ice_servers(self, user_id: UUID) -> tuple[list[dict[str, Any]], float | None]:
        return self._ice(user_id)

    def notify(self, peers: Iterable[Peer], event: str, data: Mapping[str, Any]) -> None:
        addresses = [p.peer_id for p in peers]
        if addresses:
            self._outbox.publish(addresses, event, data)

    # --- access -----------------------------------------------------------------------

    @staticmethod
    def _role(principal: Principal, access: store.RoomAccess) -> RoomRole:
        """The caller's role in the room now, or why it may not enter (another clinic's
        room, or one the caller has no part in, is OutOfScope: ``not_found``, audited)."""
        if access.clinic_id != principal.clinic_id:
            raise OutOfScope("room not found")
        role: RoomRole
        if principal.user_id == access.doctor_id:
            role = "doctor"
        elif principal.user_id == access.patient_id:
            role = "patient"
        elif access.invited:
            role = "guest"
        else:
            raise OutOfScope("room not found")
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
        return role

    # --- joining and leaving ----------------------------------------------------------

    async def join(
        self, principal: Principal, room_id: str, peer_id: str | None, *, listen: Listen
    ) -> Joined:
        """Enter the room (or come back to one's peer within the grace period).

        ``listen(peer_id)`` is called for the new peer id before the room can show
        that peer to anyone, and again for the old id when the caller gets its peer
        back (before the others are told), so the socket hears every answer to its
        arrival (``admitted``, offers). The peer id in the answer is the one that
        counts; the caller stops listening to the other.

        Should recording fail after the room took the peer, the join fails and the
        peer, held by no socket, is dropped by the sweep once nobody vouches for it."""
        now = time.time()
        access = await self._access.submit((room_id, principal.user_id))
        if access is None:
            raise NotFound("room not found")
        role = self._role(principal, access)
        # payments (issue 15): only a pay_before clinic costs the join a statement more.
        if role == "patient" and self._gate is not None and access.payment_gate == "pay_before":
            await self._gate(access.appointment_id, access.clinic_id)
        candidate = Peer(
            peer_id=new_peer_id(),
            user_id=principal.user_id,
            role=role,
            status="admitted" if role == "doctor" else "waiting",
            connected=True,
            joined_at=now,
            seen=now,
            link=new_link(),
            name=access.name,
        )
        listen(candidate.peer_id)
        if self._sfu is not None:
            self._sfu.remember(room_id, access.appointment_id)
        entry = await self._rooms.enter(
            room_id, candidate, rejoin=peer_id, max_peers=self._max_peers
        )
        peer, others = entry.peer, list(entry.others)
        if entry.outcome == "rejoined":
            listen(peer.peer_id)
        events = [_event("left", p) for p in entry.gone]
        if entry.gone and not others:
            events.append(NewEvent("ended"))
        opens = False
        if entry.outcome == "rejoined":
            events.append(_event("reconnected", peer))
        elif entry.outcome == "joined":
            events.append(_event("joined" if peer.status == "admitted" else "waiting", peer))
            opens = peer.status == "admitted" and bool(_admitted(others))
        await self._record(room_id, events, open_if=opens)
        self._tell_gone(entry.gone, others)
        if self._sfu is not None:
            for gone in entry.gone:
                await self._sfu.left(room_id, gone, empty=False)
        if entry.outcome == "full":
            raise Conflict(
                f"this call already has {len(others)} people; more need the SFU",
                code=ErrorCode.SFU_REQUIRED,
            )
        if entry.outcome == "rejoined":
            if peer.status == "admitted":
                self.notify(_admitted(others), "peer_reconnected", {"peer_id": peer.peer_id})
        elif peer.status == "waiting":
            doctors = [p for p in others if p.role == "doctor" and p.connected]
            if doctors:
                self.notify(doctors, "waiting", await self._waiting_view(access, peer))
        else:
            for other in _admitted(others):
                self.notify([other], "peer_joined", self._view(other, peer))
        answer = self._answer(peer, others)
        if self._sfu is not None and peer.status == "admitted":
            await self._on_sfu(answer, room_id, peer, others)
        return Joined(room_id, peer, answer, rejoined=entry.outcome == "rejoined")

    async def _on_sfu(
        self, answer: dict[str, Any], room_id: str, peer: Peer, others: Sequence[Peer]
    ) -> None:
        """Add the SFU grant to an admitted peer's answer when the room is (now) on it."""
        assert self._sfu is not None
        view = await self._sfu.admitted(room_id, peer, others)
        if view is not None:
            answer["mode"] = "sfu"
            answer["sfu"] = view

    def _answer(self, peer: Peer, others: Sequence[Peer]) -> dict[str, Any]:
        ice, refresh_at = self._ice(peer.user_id)
        visible = others if peer.role == "doctor" else _admitted(others)
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
            "max_peers": self._max_peers,
            # "sfu" (with the peer's grant) once admitted to a room on the SFU: _on_sfu.
            "mode": "p2p",
            "backend": self._sfu.backend if self._sfu is not None else "none",
        }

    @staticmethod
    def _view(me: Peer, other: Peer) -> dict[str, Any]:
        view: dict[str, Any] = {
            "peer_id": other.peer_id,
            "role": other.role,
            "status": other.status,
            "connected": other.connected,
            "polite": polite(me.peer_id, other.peer_id),
            "name": other.name,
        }
        if me.role == "doctor" or other.status == "admitted":
            # An admitted peer's user id is its SFU identity (LiveKit shows it to the
            # room anyway): the page maps a LiveKit participant to the peer's tile.
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

    def _tell_gone(self, gone: Iterable[Peer], rest: Sequence[Peer]) -> None:
        """Those who saw a dropped peer learn that it left."""
        for peer in gone:
            if peer.status == "admitted":
                self.notify(_admitted(rest), "peer_left", {"peer_id": peer.peer_id})
            else:
                doctors = [p for p in rest if p.role == "doctor"]
                self.notify(doctors, "waiting_left", {"peer_id": peer.peer_id})

    async def _dropped(self, room_id: str, change: Change, kind: str) -> None:
        events = [_event(kind, change.peer)]
        if not change.others:
            events.append(NewEvent("ended"))
        await self._record(room_id, events)
        self._tell_gone([change.peer], change.others)
        if self._sfu is not None:
            await self._sfu.left(room_id, change.peer, empty=not change.others)

    async def leave(self, room_id: str, peer_id: str, link: str) -> None:
        """The socket holding the peer (``link``) leaves the room; nothing if it lost it."""
        change = await self._rooms.drop(room_id, peer_id, link=link)
        if change is not None:
            await self._dropped(room_id, change, "left")

    async def holds(self, room_id: str, peer_id: str, link: str) -> bool:
        """Whether the socket binding ``link`` still holds the peer."""
        peer = (await self._rooms.peers(room_id)).get(peer_id)
        return peer is not None and peer.link == link

    # --- the doctor's controls --------------------------------------------------------

    async def _doctor_in(self, principal: Principal, room_id: str, peer_id: str) -> dict[str, Peer]:
        peers = await self._rooms.peers(room_id)
        me = peers.get(peer_id)
        if me is None or me.user_id != principal.user_id:
            raise Conflict("join the room first", code=ErrorCode.NOT_IN_ROOM)
        if me.role != "doctor":
            raise Forbidden("only the consultation's doctor may do that")
        return peers

    async def admit(self, principal: Principal, room_id: str, peer_id: str, target: str) -> None:
        await self._doctor_in(principal, room_id, peer_id)
        outcome, change = await self._rooms.admit(room_id, target, max_peers=self._max_peers)
        if outcome == "absent":
            raise NotFound("nobody with that peer id is in the room")
        if outcome == "full":
            raise Conflict(
                "the peer-to-peer call is full; more need the SFU", code=ErrorCode.SFU_REQUIRED
            )
        if outcome != "admitted" or change is None:
            return
        peer, others = change.peer, change.others
        admitted = _admitted(others)
        await self._record(room_id, [_event("admitted", peer)], open_if=bool(admitted))
        answer = self._answer(peer, others)
        if self._sfu is not None:
            await self._on_sfu(answer, room_id, peer, others)
        self.notify([peer], "admitted", answer)
        for other in admitted:
            self.notify([other], "peer_joined", self._view(other, peer))

    async def decline(self, principal: Principal, room_id: str, peer_id: str, target: str) -> None:
        await self._send_away(principal, room_id, peer_id, target, kind="declined")

    async def remove(self, principal: Principal, room_id: str, peer_id: str, target: str) -> None:
        await self._send_away(principal, room_id, peer_id, target, kind="removed")

    async def _send_away(
        self, principal: Principal, room_id: str, peer_id: str, target: str, *, kind: str
    ) -> None:
        peers = await self._doctor_in(principal, room_id, peer_id)
        peer = peers.get(target)
        if peer is None or peer.peer_id == peer_id:
            raise NotFound("nobody else with that peer id is in the room")
        self.notify([peer], kind, {"by": peer_id})
        if self._sfu is not None and kind == "removed":
            await self._sfu.removed(room_id, peer)
        change = await self._rooms.drop(room_id, target)
        if change is not None:
            await self._dropped(room_id, change, kind)

    async def invite(self, principal: Principal, room_id: str, peer_id: str, user_id: UUID) -> None:
        await self._doctor_in(principal, room_id, peer_id)
        async with self._pool.acquire() as conn:
            user = await accounts.get_user(conn, user_id)
            if user is None:
                raise NotFound("user not found")
            if user.clinic_id != principal.clinic_id:
                raise OutOfScope("user not found")
            await store.invite(conn, room_id, user_id, user.role.value, principal.user_id)

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
        self.notify([other], "signal", {"from": peer_id, **message})

    async def sfu_signal(
        self, principal: Principal, room_id: str, peer_id: str, request: Any
    ) -> dict[str, Any]:
        """An admitted peer's message for the SFU (wire.SfuRequest; sfu_bridge.py)."""
        if self._sfu is None:
            raise Conflict("this server has no SFU", code=ErrorCode.CONFLICT)
        peers = await self._rooms.peers(room_id)
        me = peers.get(peer_id)
        if me is None or me.user_id != principal.user_id:
            raise Conflict("join the room first", code=ErrorCode.NOT_IN_ROOM)
        if me.status != "admitted":
            raise Forbidden("wait until the doctor admits you", code=ErrorCode.NOT_ADMITTED)
        return await self._sfu.signal(room_id, me, peers, request)

    async def record(
        self, principal: Principal, room_id: str, peer_id: str, on: bool
    ) -> dict[str, Any]:
        """The doctor starts or stops recording the room (on the SFU; sfu_bridge.py)."""
        if self._sfu is None:
            raise Conflict("recording needs an SFU (SFU=janus or livekit)", code=ErrorCode.CONFLICT)
        peers = await self._doctor_in(principal, room_id, peer_id)
        return await self._sfu.record(principal, room_id, peers[peer_id], peers, on)

    async def recording_changed(
        self, consultation_id: UUID, consent: bool, recording: bool
    ) -> None:
        """The recording store's state of a room changed: everyone in it is told."""
        if self._sfu is None:
            return
        room_id = self._sfu.room_of(consultation_id)
        if room_id is None:
            return
        peers = list((await self._rooms.peers(room_id)).values())
        self.notify(peers, "recording", {"consent": consent, "recording": recording})

    # --- connection loss and the sweep ------------------------------------------------

    async def disconnected(self, room_id: str, peer_id: str, link: str) -> None:
        """The socket holding the peer dropped: keep the place for the grace period and
        tell the others. Nothing when that socket no longer held the peer."""
        until = time.time() + self._settings.grace_seconds
        change = await self._rooms.disconnect(room_id, peer_id, link=link, grace_until=until)
        if change is None:
            return
        await self._record(room_id, [_event("disconnected", change.peer)])
        if change.peer.status == "admitted":
            self.notify(_admitted(change.others), "peer_disconnected", {"peer_id": peer_id})

    async def vouch(self, held: Sequence[tuple[str, str, str]]) -> list[int]:
        """This process still holds these peers (room id, peer id, link); the indexes of
        those it does not hold any more (sent away, or taken over by a rejoin)."""
        if not held:
            return []
        return await self._rooms.touch(held, time.time())

    async def sweep(self) -> int:
        """Drop the peers whose grace ended or whose process went quiet; how many."""
        now = time.time()
        dropped = 0
        due: list[PeerRef] = await self._rooms.due(now)
        for room_id, peer_id in due:
            change = await self._rooms.drop(room_id, peer_id, expired_at=now)
            if change is not None:
                await self._dropped(room_id, change, "left")
                dropped += 1
        return dropped

    async def events(self, room_id: str) -> list[store.RoomEvent]:
        return await store.events(self._pool, room_id)
