"""The one interface the rest of the server uses to talk to an SFU.

Backends: Janus (``teleconsult.rtc.janus``; runs here and on a small install) and
LiveKit (``teleconsult.rtc.livekit``; production). Nothing outside ``rtc/`` imports
a backend module: the composition root picks one from ``SFU`` and hands it over as
an :class:`Sfu`.

Rooms are named by the consultation (the appointment id). Rights come from the
role the signaling service assigns (docs/rtc.md):

- doctor: publish, subscribe, admin, record;
- patient and invited people (interpreter, family): publish and subscribe;
- observer: subscribe only.

A removal is final for that participant's credentials: the backend forgets the
join token (Janus) or sets ``revoke_token_ts`` (LiveKit), so the same
credentials cannot bring them back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID


class SfuRole(StrEnum):
    DOCTOR = "doctor"
    PATIENT = "patient"
    GUEST = "guest"
    OBSERVER = "observer"


@dataclass(frozen=True)
class Rights:
    publish: bool
    subscribe: bool
    admin: bool
    record: bool


RIGHTS: dict[SfuRole, Rights] = {
    SfuRole.DOCTOR: Rights(publish=True, subscribe=True, admin=True, record=True),
    SfuRole.PATIENT: Rights(publish=True, subscribe=True, admin=False, record=False),
    SfuRole.GUEST: Rights(publish=True, subscribe=True, admin=False, record=False),
    SfuRole.OBSERVER: Rights(publish=False, subscribe=True, admin=False, record=False),
}


@dataclass(frozen=True)
class SfuRoom:
    consultation_id: UUID
    backend: str  # "janus" or "livekit"
    name: str  # the backend's own room name or number, as text


@dataclass(frozen=True)
class JoinGrant:
    """What one participant needs to join, and nothing more.

    ``details`` is backend-specific and safe to hand to that participant: for
    Janus, the room number and their own join token; for LiveKit, the URL and a
    short-lived access token. Never a room secret or an API secret.
    """

    backend: str
    identity: str  # the participant's identity in the room (our user id, as text)
    role: SfuRole
    expires_at: datetime
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Participant:
    identity: str
    joined_at: datetime | None
    publishing: bool


class SfuEventKind(StrEnum):
    JOINED = "joined"
    LEFT = "left"
    RECORDING_FINISHED = "recording_finished"
    RECORDING_FAILED = "recording_failed"
    ROOM_FINISHED = "room_finished"


@dataclass(frozen=True)
class SfuEvent:
    """An event from the backend, in our terms.

    ``event_id`` is unique per event (duplicates are dropped on it); ``at`` is the
    backend's own event time, which orders events that arrive out of order.
    For ``RECORDING_FINISHED``, ``file_path`` is a playable plaintext file the
    recording store seals and then deletes.
    """

    event_id: str
    kind: SfuEventKind
    consultation_id: UUID
    at: datetime
    identity: str | None = None
    recording_id: str | None = None
    file_path: str | None = None


SfuEventHandler = Callable[[SfuEvent], Awaitable[None]]


class Sfu(Protocol):
    """An SFU backend. Every method is safe to call again with the same arguments."""

    name: str

    async def create_room(self, consultation_id: UUID) -> SfuRoom: ...

    async def close_room(self, consultation_id: UUID) -> None: ...

    async def grant(self, consultation_id: UUID, identity: str, role: SfuRole) -> JoinGrant: ...

    async def remove(self, consultation_id: UUID, identity: str) -> None: ...

    async def participants(self, consultation_id: UUID) -> Sequence[Participant]: ...

    async def start_recording(self, consultation_id: UUID) -> str:
        """Starts recording the room; answers the backend's recording id."""
        ...

    async def stop_recording(self, consultation_id: UUID, recording_id: str) -> None: ...

    def on_event(self, handler: SfuEventHandler) -> None:
        """Registers the one handler that receives every :class:`SfuEvent`."""
        ...

    async def close(self) -> None: ...
