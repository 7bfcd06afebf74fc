"""Consultation rooms on an SFU: when a room leaves peer-to-peer, who gets which grant,
and the SDP relay for backends browsers do not reach (Janus).

Rules (docs/signaling.md, "SFU rooms"):
* A room is peer to peer until a third person is admitted; from then on it is an
  SFU room until it empties. Every admitted peer is told ``mode`` with its own
  grant; whoever is admitted later gets the grant in its ``admitted`` answer.
* The doctor always gets a grant (the doctor is never locked out of their room).
* Removing someone goes through :meth:`Sfu.remove`: their token is forgotten and
  they are kicked, so the same credentials cannot bring them back.
* The SFU room is closed when the last peer leaves.
* Only the doctor records (``record``), on the SFU: a peer-to-peer room moves to the
  SFU first. Without the patient's consent (``consented``) it is refused before
  anything moves or starts; the recording store (``begin``) checks again, under its
  lock, and should a withdrawal slip in between, the SFU's recording is stopped at once.
  Everyone in the room is told ``recording`` when the store's state changes
  (:meth:`SignalingService.recording_changed`).

Which rooms are on the SFU, with their consultation and running recording, is kept
in the shared :class:`~teleconsult.signaling.sfu_rooms.SfuRooms` (Redis with several
processes), so a join, admission, removal or recording on any process sees what
another did; the relay of a peer runs on the process holding its socket (docs/rtc.md,
"Several server processes"). Identities are our user ids, as text. Transport-free.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from uuid import UUID

from teleconsult.core.errors import (
    BadRequest,
    ClientError,
    Conflict,
    ErrorCode,
    Forbidden,
    NotFound,
)
from teleconsult.core.identity import Principal
from teleconsult.core.tasks import cancel_and_wait
from teleconsult.rtc.sfu import RIGHTS, JoinGrant, Sfu, SfuRole
from teleconsult.rtc.sfu_relay import SfuRelay
from teleconsult.signaling.rooms import Peer
from teleconsult.signaling.sfu_rooms import LocalSfuRooms, SfuRooms

logger = logging.getLogger(__name__)

# A room goes to the SFU when this many people are admitted.
SFU_FROM = 3
ROLES = {"doctor": SfuRole.DOCTOR, "patient": SfuRole.PATIENT, "guest": SfuRole.GUEST}

# The /signal hub's publish: addresses (peer ids), event, data.
Publish = Callable[[Iterable[str], str, Mapping[str, Any]], None]
# The recording store's begin(principal, consultation id, the SFU's recording id):
# refuses (a ClientError) without the patient's consent.
BeginRecording = Callable[[Principal, UUID, str], Awaitable[Any]]
# Whether the consultation's patient consents to recording it now.
Consented = Callable[[UUID], Awaitable[bool]]


def identity(peer: Peer) -> str:
    return str(peer.user_id)


def grant_view(grant: JoinGrant) -> dict[str, Any]:
    """What one participant is told of its grant (never a room or API secret)."""
    return {
        "backend": grant.backend,
        "identity": grant.identity,
        "role": str(grant.role),
        "expires_at": grant.expires_at.isoformat(),
        "relay": grant.backend == "janus",
        **grant.details,
    }


class SfuBridge:
    def __init__(
        self,
        sfu: Sfu,
        relay: SfuRelay | None,
        publish: Publish,
        *,
        begin_recording: BeginRecording | None = None,
        consented: Consented | None = None,
        shared: SfuRooms | None = None,
    ) -> None:
        self._sfu = sfu
        self._relay = relay
        self._publish = publish
        self._begin_recording = begin_recording
        self._consented = consented
        self._shared: SfuRooms = shared or LocalSfuRooms()
        # Rooms joined through this process (room_of); the shared state has the rest.
        self._consultations: dict[str, UUID] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _notify(self, peers: Iterable[Peer], event: str, data: Mapping[str, Any]) -> None:
        addresses = [p.peer_id for p in peers]
        if addresses:
            self._publish(addresses, event, data)

    @property
    def backend(self) -> str:
        return self._sfu.name

    def remember(self, room_id: str, consultation_id: UUID) -> None:
        self._consultations[room_id] = consultation_id

    async def mode(self, room_id: str) -> str:
        return "sfu" if await self._shared.get(room_id) is not None else "p2p"

    async def _consultation(self, room_id: str) -> UUID:
        found = self._consultations.get(room_id)
        if found is None:
            state = await self._shared.get(room_id)
            found = state.consultation_id if state is not None else None
        if found is None:
            raise Conflict("join the room first", code=ErrorCode.NOT_IN_ROOM)
        return found

    async def _grant(self, room_id: str, peer: Peer) -> dict[str, Any]:
        consultation = await self._consultation(room_id)
        return grant_view(await self._sfu.grant(consultation, identity(peer), ROLES[peer.role]))

    async def admitted(
        self, room_id: str, peer: Peer, others: Iterable[Peer]
    ) -> dict[str, Any] | None:
        """``peer`` is admitted (a doctor who joined, a peer admitted or back): its SFU
        grant when the room is on the SFU, after moving the room there when this
        admission makes it ``SFU_FROM`` people (everyone else is told ``mode``)."""
        admitted = [p for p in others if p.status == "admitted" and p.peer_id != peer.peer_id]
        if len(admitted) + 1 < SFU_FROM and await self._shared.get(room_id) is None:
            return None
        await self._move(room_id, admitted)
        return await self._grant(room_id, peer)

    async def _move(self, room_id: str, admitted: Iterable[Peer]) -> None:
        """Put the room on the SFU (once, whichever process does it); each of
        ``admitted`` is told with its grant by the process that moved it."""
        if await self._shared.get(room_id) is not None:
            return
        consultation = await self._consultation(room_id)
        await self._sfu.create_room(consultation)
        if not await self._shared.mark(room_id, consultation, self._sfu.name):
            return  # another process moved it at the same time, and told them
        for other in admitted:
            view = await self._grant(room_id, other)
            self._notify([other], "mode", {"mode": "sfu", "sfu": view})

    async def removed(self, room_id: str, peer: Peer) -> None:
        """``peer`` was removed by the doctor: its credentials stop working, whichever
        process granted them or holds its socket."""
        state = await self._shared.get(room_id)
        if state is not None:
            await self._sfu.remove(state.consultation_id, identity(peer))

    async def left(self, room_id: str, peer: Peer, *, empty: bool) -> None:
        if empty:
            self._consultations.pop(room_id, None)  # joining again remembers it
        state = await self._shared.get(room_id)
        if state is None:
            return
        consultation = state.consultation_id
        if self._relay is not None:
            # Its relay session, if this process holds it (another process's session
            # is dropped there when next used: its grant is gone or changed).
            await self._relay.leave_media(consultation, identity(peer))
        if empty:
            await self._shared.clear(room_id)
            await self._sfu.close_room(consultation)  # which stops a recording

    # --- recording --------------------------------------------------------------------

    async def record(
        self, principal: Principal, room_id: str, me: Peer, peers: Mapping[str, Peer], on: bool
    ) -> dict[str, Any]:
        """The doctor starts (``on``) or stops the room's recording."""
        if me.role not in ROLES or not RIGHTS[ROLES[me.role]].record:
            raise Forbidden("only the consultation's doctor records it")
        if self._begin_recording is None:
            raise Conflict("this server does not record", code=ErrorCode.CONFLICT)
        consultation = await self._consultation(room_id)
        if not on:
            # Stopped here whichever process started it (the id is shared).
            running = await self._shared.take_recording(room_id)
            if running is not None:
                await self._sfu.stop_recording(consultation, running)
            return {"recording": False}
        state = await self._shared.get(room_id)
        if state is not None and state.recording is not None:
            return {"recording": True}
        if self._consented is not None and not await self._consented(consultation):
            # Refused before the room moves or the SFU records anyone: nothing changes.
            raise Conflict(
                "the patient has not consented to recording this consultation",
                code=ErrorCode.RECORDING_CONSENT_REQUIRED,
            )
        admitted = [p for p in peers.values() if p.status == "admitted"]
        others = [p for p in admitted if p.peer_id != me.peer_id]
        await self._move(room_id, others)
        # The doctor's own grant, for the answer (the others were told ``mode``).
        view = await self._grant(room_id, me)
        backend_id = await self._sfu.start_recording(consultation)
        try:
            await self._begin_recording(principal, consultation, backend_id)
        except BaseException:
            # Refused (no consent) or failed: nothing is kept of what was recorded.
            await self._sfu.stop_recording(consultation, backend_id)
            raise
        await self._shared.start_recording(room_id, backend_id)
        return {"recording": True, "mode": "sfu", "sfu": view}

    def room_of(self, consultation_id: UUID) -> str | None:
        for room_id, found in self._consultations.items():
            if found == consultation_id:
                return room_id
        return None

    # --- the relay --------------------------------------------------------------------

    async def signal(
        self, room_id: str, me: Peer, peers: Mapping[str, Peer], request: Any
    ) -> dict[str, Any]:
        """One SFU message of an admitted peer: ``publish`` (an offer; answers the SFU's
        answer), ``subscribe`` (peer ids; answers the SFU's offer and which of its
        streams, by ``mid``, is which peer's), ``answer``, ``candidate``, ``leave``."""
        if self._relay is None:
            raise ClientError(
                f"the {self.backend} SFU is joined directly with the grant, not over /signal"
            )
        state = await self._shared.get(room_id)
        if state is None:
            raise Conflict("this room is peer to peer", code=ErrorCode.CONFLICT)
        consultation, who = state.consultation_id, identity(me)
        kind = request.kind
        if kind == "publish":
            answer = await self._relay.publish(consultation, who, request.sdp)
            self._announce(room_id, consultation, me, peers)
            return {"sdp": answer}
        if kind == "subscribe":
            peer_of: dict[str, str] = {}  # identity -> peer id
            for peer_id in request.peers:
                other = peers.get(peer_id)
                if other is None or other.status != "admitted" or other.peer_id == me.peer_id:
                    raise NotFound("no admitted peer with that id in this room")
                peer_of[identity(other)] = other.peer_id
            offer = await self._relay.subscription(consultation, who, list(peer_of))
            # Which stream (by mid) is whose: the page shows one tile per person.
            streams = [{"mid": s.mid, "peer_id": peer_of[s.identity]} for s in offer.streams]
            return {"sdp": offer.sdp, "streams": streams}
        if kind == "answer":
            await self._relay.answer(consultation, who, request.sdp)
            return {}
        if kind == "candidate":
            candidate = request.candidate.model_dump() if request.candidate else None
            await self._relay.trickle(consultation, who, request.target, candidate)
            return {}
        if kind == "leave":
            await self._relay.leave_media(consultation, who)
            return {}
        raise BadRequest(f"unknown SFU message {kind!r}")

    def _announce(
        self, room_id: str, consultation: UUID, me: Peer, peers: Mapping[str, Peer]
    ) -> None:
        """Once the publisher's media is up, the others may subscribe to it."""
        relay = self._relay
        assert relay is not None
        others = [p for p in peers.values() if p.status == "admitted" and p.peer_id != me.peer_id]

        async def tell() -> None:
            if await relay.wait_live(consultation, identity(me)):
                self._notify(others, "sfu_published", {"peer_id": me.peer_id})

        task = asyncio.create_task(tell(), name="sfu-announce")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks))
        await self._shared.close()
