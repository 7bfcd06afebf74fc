"""HTTP transport for recordings: consent, the room's recording state and list, playback."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field

from teleconsult.api.models import Body
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.recording.playback import Playback, PlaybackCut
from teleconsult.recording.service import RecordingService, RoomRecordingState
from teleconsult.recording.store import Consent, Recording
from teleconsult.recording.tickets import PlaybackTickets

RECORDINGS = web.AppKey("recordings", RecordingService)
api = Api()

CONSENT = "/api/v1/appointments/{appointment_id}/recording-consent"


class ConsentOut(BaseModel):
    appointment_id: UUID
    given_at: datetime
    withdrawn_at: datetime | None
    active: bool

    @classmethod
    def of(cls, consent: Consent) -> ConsentOut:
        return cls(
            appointment_id=consent.appointment_id,
            given_at=consent.given_at,
            withdrawn_at=consent.withdrawn_at,
            active=consent.active,
        )


class RecordingOut(BaseModel):
    id: UUID
    appointment_id: UUID
    state: Literal["pending", "recording", "sealing", "ready", "failed", "expired"]
    content_type: str | None
    size: int | None = Field(description="Bytes of media, once sealed")
    key_version: int | None = Field(description="The master key that wraps its data key")
    created_at: datetime
    finished_at: datetime | None
    expires_at: datetime | None

    @classmethod
    def of(cls, r: Recording) -> RecordingOut:
        return cls(
            id=r.id,
            appointment_id=r.appointment_id,
            state=r.state,
            content_type=r.content_type,
            size=r.size,
            key_version=r.key_version,
            created_at=r.created_at,
            finished_at=r.finished_at,
            expires_at=r.expires_at,
        )


class RecordingList(BaseModel):
    """What the room page polls: consent, whether a recording runs, and the list."""

    appointment_id: UUID
    consent: bool = Field(description="The patient consents to recording")
    recording: bool = Field(description="A recording is being made or sealed now")
    recording_id: UUID | None
    items: list[RecordingOut]

    @classmethod
    def of(cls, room: RoomRecordingState, found: list[Recording]) -> RecordingList:
        return cls(
            appointment_id=room.appointment_id,
            consent=room.consent,
            recording=room.recording,
            recording_id=room.recording_id,
            items=[RecordingOut.of(r) for r in found],
        )


def _svc(req: ApiRequest) -> RecordingService:
    return req.request.app[RECORDINGS]


@api.op(
    "POST",
    CONSENT,
    operation_id="giveRecordingConsent",
    summary="The patient consents to recording this consultation",
    tag="recordings",
    action=Action.RECORDING_CONSENT,
    response=ConsentOut,
)
async def give_consent(req: ApiRequest) -> ConsentOut:
    """Only the consultation's own patient; needed before any recording starts. Repeating
    it keeps the first consent's time; after a withdrawal it consents anew."""
    consent = await _svc(req).give_consent(req.principal, req.params["appointment_id"], ip=req.ip)
    return ConsentOut.of(consent)


@api.op(
    "DELETE",
    CONSENT,
    operation_id="withdrawRecordingConsent",
    summary="The patient withdraws consent: no new recording may start",
    tag="recordings",
    action=Action.RECORDING_CONSENT,
    status=204,
)
async def withdraw_consent(req: ApiRequest) -> None:
    await _svc(req).withdraw_consent(req.principal, req.params["appointment_id"], ip=req.ip)


@api.op(
    "GET",
    "/api/v1/appointments/{appointment_id}/recordings",
    operation_id="listRecordings",
    summary="The consultation's recording state (consent, recording now) and its recordings",
    tag="recordings",
    action=Action.RECORDING_READ,
    response=RecordingList,
)
async def list_recordings(req: ApiRequest) -> RecordingList:
    """Scoped like the appointment; what the room page polls to show "recording"."""
    room, found = await _svc(req).list_for(req.principal, req.params["appointment_id"], ip=req.ip)
    return RecordingList.of(room, found)


@api.op(
    "GET",
    "/api/v1/recordings/{recording_id}/media",
    operation_id="getRecordingMedia",
    summary="The decrypted media, with HTTP Range for seeking (206)",
    tag="recordings",
    action=Action.RECORDING_PLAY,
    errors=(409, 416),
    media_type="*/*",
)
async def get_media(req: ApiRequest) -> web.StreamResponse:
    """To the consultation's doctor and its patient. One byte range (``Range:
    bytes=a-b``, ``a-`` or ``-n``) answers 206 with ``Content-Range``; a range past
    the end, 416; several ranges are answered with the whole media (200). Every
    playback is audited. Only the chunks the range touches are read and decrypted."""
    playback = await _svc(req).play(
        req.principal, req.params["recording_id"], req.request.headers.get("Range"), ip=req.ip
    )
    return await _send(req, playback)


async def _send(req: ApiRequest, playback: Playback) -> web.StreamResponse:
    """Stream a playback whose first piece the service has already checked (a damaged
    object answered 409 ``recording_damaged`` before this). Damage found later cuts the
    connection: the body ends short of ``Content-Length``, never as a clean end."""
    resp = web.StreamResponse(status=200 if playback.range is None else 206)
    resp.content_type = playback.recording.content_type or "application/octet-stream"
    resp.content_length = playback.end - playback.start
    resp.headers["Accept-Ranges"] = "bytes"
    if playback.range is not None:
        resp.headers["Content-Range"] = playback.range.content_range(playback.total)
    await resp.prepare(req.request)
    try:
        async for part in playback.chunks:
            await resp.write(part)
    except PlaybackCut:
        resp.force_close()
        transport = req.request.transport
        if transport is not None:
            transport.abort()
        return resp  # already audited and logged; aiohttp's own end finds it closed
    await resp.write_eof()
    return resp


# --- playback tickets (issue 13, pages): a <video src> cannot send Authorization ---
class PlaybackTicketOut(BaseModel):
    url: str = Field(description="Same-origin URL a media element can play (Range works)")
    expires_at: datetime


class PlaybackQuery(BaseModel):
    ticket: str = Field(min_length=1, max_length=600)


@api.op(
    "POST",
    "/api/v1/recordings/{recording_id}/playback-ticket",
    operation_id="issueRecordingPlaybackTicket",
    summary="A short-lived URL that plays this recording for this user (for <video src>)",
    tag="recordings",
    action=Action.RECORDING_PLAY,
    errors=(409,),
    response=PlaybackTicketOut,
)
async def issue_playback_ticket(req: ApiRequest) -> PlaybackTicketOut:
    """Checked like the media route. The ticket is bound to the recording, the caller
    (user, clinic, role, session) and playback only, and expires after five minutes
    (``TICKET_TTL_SECONDS``); each request made with it is audited as a playback
    (docs/rtc.md, "Playback in the pages")."""
    recording_id = req.params["recording_id"]
    await _svc(req).check_playable(req.principal, recording_id)
    ticket = PlaybackTickets(_svc(req).keys).issue(req.principal, recording_id)
    return PlaybackTicketOut(
        url=f"/api/v1/recordings/{recording_id}/playback?ticket={ticket.ticket}",
        expires_at=datetime.fromtimestamp(ticket.expires_at, UTC),
    )


@api.op(
    "GET",
    "/api/v1/recordings/{recording_id}/playback",
    operation_id="playRecordingWithTicket",
    summary="The decrypted media for a playback ticket's holder, with HTTP Range (206)",
    tag="recordings",
    action=None,
    query=PlaybackQuery,
    errors=(409, 416),
    media_type="*/*",
)
async def play_with_ticket(req: ApiRequest) -> web.StreamResponse:
    """No bearer token: the ticket (from ``issueRecordingPlaybackTicket``) is the
    credential. A forged, altered, expired ticket, one for another recording, or one
    whose login session has ended (logout, password change, disabled account) or whose
    user's role changed since, is ``not_found``. Then exactly the media route: scope
    checks, Range, an audit row."""
    playback = await _svc(req).play_with_ticket(
        req.query(PlaybackQuery).ticket,
        req.params["recording_id"],
        req.request.headers.get("Range"),
        ip=req.ip,
    )
    return await _send(req, playback)


# --- end playback tickets ---


class Retention(Body):
    days: int = Field(ge=1, le=3650, description="Days a recording is kept once sealed")


class RetentionOut(BaseModel):
    clinic_id: UUID
    days: int


@api.op(
    "PUT",
    "/api/v1/clinics/{clinic_id}/recording-retention",
    operation_id="setRecordingRetention",
    summary="How long the clinic keeps recordings (days, 1 to 3650)",
    tag="recordings",
    action=Action.RECORDING_RETENTION,
    body=Retention,
    response=RetentionOut,
)
async def set_retention(req: ApiRequest) -> RetentionOut:
    """Applies to recordings sealed from now on; expiry destroys their data key (docs/rtc.md,
    "Retention and crypto-shredding")."""
    clinic_id = req.params["clinic_id"]
    days = await _svc(req).set_retention(
        req.principal, clinic_id, req.body(Retention).days, ip=req.ip
    )
    return RetentionOut(clinic_id=clinic_id, days=days)
