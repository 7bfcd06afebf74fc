"""The LiveKit backend of :class:`~teleconsult.rtc.sfu.Sfu` (``SFU=livekit``; docs/rtc.md).

Talks to LiveKit only through livekit-api: join tokens (``AccessToken`` with
``VideoGrants`` per role, bound to the room, minutes-long), ``RoomService``
(create, delete, list and remove participants, with ``revoke_token_ts``) and
``Egress`` (room-composite recording to a file, stop, list). LiveKit's events
come in as webhooks (``livekit_webhooks.py``) and leave as :class:`SfuEvent`.

Safe to share between tasks: it holds no per-room state of its own (that lives
in the database, ``livekit_store.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from uuid import UUID, uuid4

import aiohttp
from livekit import api
from livekit.protocol import egress as egress_pb
from livekit.protocol import room as room_pb

from teleconsult.core.errors import InfrastructureError
from teleconsult.core.settings import LiveKitSettings
from teleconsult.rtc.livekit_state import Egress, Listed, egress_of, room_name
from teleconsult.rtc.sfu import (
    RIGHTS,
    JoinGrant,
    Participant,
    SfuEvent,
    SfuEventHandler,
    SfuRole,
    SfuRoom,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# An empty room is closed by LiveKit after this long (we close it ourselves at the end).
EMPTY_TIMEOUT_SECONDS = 300
_NOT_FOUND = (api.TwirpErrorCode.NOT_FOUND,)


def video_grants(room: str, role: SfuRole) -> api.VideoGrants:
    """The grants of one role in one room (docs/rtc.md, "LiveKit grants")."""
    rights = RIGHTS[role]
    return api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=rights.publish,
        can_publish_data=rights.publish,
        can_subscribe=rights.subscribe,
        room_admin=rights.admin,
        room_record=rights.record,
        can_update_own_metadata=False,
    )


def join_token(
    settings: LiveKitSettings, room: str, identity: str, role: SfuRole, now: datetime
) -> tuple[str, datetime]:
    """A signed join token and when it expires.

    livekit-api stamps ``nbf`` with the minting second; LiveKit refuses the token
    once the identity was removed with a later ``revoke_token_ts``.
    """
    ttl = timedelta(minutes=settings.token_ttl_minutes)
    token = (
        api.AccessToken(settings.api_key, settings.api_secret)
        .with_identity(identity)
        .with_name(identity)
        .with_grants(video_grants(room, role))
        .with_ttl(ttl)
        .to_jwt()
    )
    return token, now + ttl


@dataclass(frozen=True)
class Removal:
    room: str
    identity: str
    revoke_token_ts: int


class LiveKitSfu:
    """An :class:`Sfu` over a LiveKit server. ``close`` closes its HTTP session."""

    name = "livekit"

    def __init__(self, settings: LiveKitSettings, *, session: aiohttp.ClientSession) -> None:
        if settings.url is None:
            raise ValueError("LIVEKIT_URL is not set")
        self._settings = settings
        self._url = settings.url
        # failover=False: there is one LiveKit deployment; region discovery is LiveKit Cloud's.
        self._api = api.LiveKitAPI(
            settings.url,
            settings.api_key,
            settings.api_secret,
            session=session,
            failover=False,
        )
        self._handler: SfuEventHandler | None = None

    # -- rooms --------------------------------------------------------------------------

    async def create_room(self, consultation_id: UUID) -> SfuRoom:
        name = room_name(consultation_id)
        await self._call(
            "CreateRoom",
            self._api.room.create_room(
                room_pb.CreateRoomRequest(name=name, empty_timeout=EMPTY_TIMEOUT_SECONDS)
            ),
        )
        return SfuRoom(consultation_id=consultation_id, backend=self.name, name=name)

    async def close_room(self, consultation_id: UUID) -> None:
        """Deletes the room (everyone is disconnected); a room already gone is fine."""
        request = room_pb.DeleteRoomRequest(room=room_name(consultation_id))
        await self._call("DeleteRoom", self._api.room.delete_room(request), absent=_NOT_FOUND)

    async def grant(self, consultation_id: UUID, identity: str, role: SfuRole) -> JoinGrant:
        room = room_name(consultation_id)
        token, expires_at = join_token(self._settings, room, identity, role, datetime.now(UTC))
        return JoinGrant(
            backend=self.name,
            identity=identity,
            role=role,
            expires_at=expires_at,
            details={"url": self._url, "room": room, "token": token},
        )

    async def remove(self, consultation_id: UUID, identity: str) -> None:
        await self.remove_participant(room_name(consultation_id), identity)

    async def remove_participant(self, room: str, identity: str) -> Removal:
        """Disconnects ``identity`` and revokes every token minted for it up to now.

        ``revoke_token_ts`` is the next whole second: a token minted in this very
        second (``nbf`` has second resolution) is revoked too. A participant who is
        not connected is still revoked: LiveKit answers not_found, and the
        revocation is what keeps them out.
        """
        revoke = int(time.time()) + 1
        request = room_pb.RoomParticipantIdentity(
            room=room, identity=identity, revoke_token_ts=revoke
        )
        await self._call(
            "RemoveParticipant", self._api.room.remove_participant(request), absent=_NOT_FOUND
        )
        return Removal(room=room, identity=identity, revoke_token_ts=revoke)

    async def participants(self, consultation_id: UUID) -> Sequence[Participant]:
        return [
            Participant(
                identity=p.identity,
                joined_at=datetime.fromtimestamp(p.joined_ms / 1000, UTC) if p.joined_ms else None,
                publishing=p.publishing,
            )
            for p in await self.list_participants(room_name(consultation_id))
        ]

    async def list_participants(self, room: str) -> list[Listed]:
        answer = await self._call(
            "ListParticipants",
            self._api.room.list_participants(room_pb.ListParticipantsRequest(room=room)),
            absent=_NOT_FOUND,
        )
        if answer is None:  # no such room: nobody in it
            return []
        return [
            Listed(
                identity=p.identity,
                sid=p.sid,
                joined_ms=int(p.joined_at_ms or p.joined_at * 1000),
                publishing=p.is_publisher,
            )
            for p in answer.participants
        ]

    # -- recordings ---------------------------------------------------------------------

    async def start_recording(self, consultation_id: UUID) -> str:
        room = room_name(consultation_id)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = Path(self._settings.egress_dir) / f"{room}-{stamp}-{uuid4().hex[:12]}.mp4"
        request = egress_pb.RoomCompositeEgressRequest(
            room_name=room,
            layout="grid",
            file_outputs=[
                egress_pb.EncodedFileOutput(
                    file_type=egress_pb.EncodedFileType.MP4, filepath=str(path)
                )
            ],
        )
        info = await self._call(
            "StartRoomCompositeEgress", self._api.egress.start_room_composite_egress(request)
        )
        assert info is not None
        return str(info.egress_id)

    async def stop_recording(self, consultation_id: UUID, recording_id: str) -> None:
        # Already ended (or never known): the intake learns the final state anyway.
        await self._call(
            "StopEgress",
            self._api.egress.stop_egress(egress_pb.StopEgressRequest(egress_id=recording_id)),
            absent=(*_NOT_FOUND, api.TwirpErrorCode.FAILED_PRECONDITION),
        )

    async def list_egress(self, room: str, egress_id: str | None = None) -> list[Egress]:
        request = egress_pb.ListEgressRequest(room_name=room, egress_id=egress_id or "")
        answer = await self._call("ListEgress", self._api.egress.list_egress(request))
        return [] if answer is None else [egress_of(info) for info in answer.items]

    # -- events -------------------------------------------------------------------------

    def on_event(self, handler: SfuEventHandler) -> None:
        self._handler = handler

    @property
    def handler(self) -> SfuEventHandler | None:
        """The registered handler (tests chain onto it)."""
        return self._handler

    async def deliver(self, event: SfuEvent) -> None:
        """Hands one event (from the webhook intake) to the registered handler."""
        if self._handler is not None:
            await self._handler(event)

    async def close(self) -> None:
        await self._api.aclose()

    @staticmethod
    async def _call(what: str, call: Awaitable[T], *, absent: tuple[str, ...] = ()) -> T | None:
        """The answer; None for an error whose code is in ``absent``; else InfrastructureError."""
        try:
            return await call
        except api.TwirpError as exc:
            if exc.code in absent:
                return None
            raise InfrastructureError(f"LiveKit {what}: {exc.code} {exc.message}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise InfrastructureError(f"LiveKit {what}: {exc!r}") from exc
