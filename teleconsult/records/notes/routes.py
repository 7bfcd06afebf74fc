"""HTTP transport for clinical notes. ``listPatientNotes`` and ``createPatientNote`` keep
their paths and answers (the fields added are new: ``version``, ``version_id``,
``consultation_id``, ``supersedes``, ``version_created_at``); ``id`` is the note's,
stable across its versions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from teleconsult.api.models import INT4_MAX, Body, PageQuery
from teleconsult.api.pagination import cut_page, decode_cursor
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.records.notes.service import NotesService, NoteVersion

NOTES = web.AppKey("record_notes", NotesService)
api = Api()

NoteText = Annotated[str, StringConstraints(min_length=1, max_length=20000, pattern=r"\S")]


class Note(BaseModel):
    id: UUID
    patient_id: UUID
    author_id: UUID
    body: str
    created_at: datetime
    version: int
    version_id: UUID
    consultation_id: UUID | None
    supersedes: UUID | None
    version_created_at: datetime

    @classmethod
    def of(cls, note: NoteVersion) -> Note:
        return cls.model_validate(note.__dict__)


class NotePage(BaseModel):
    items: list[Note]
    next_cursor: str | None


class NoteHistory(BaseModel):
    items: list[Note]


class NoteBody(Body):
    body: NoteText
    consultation_id: UUID | None = None


class AmendmentBody(Body):
    body: NoteText
    # The version the amendment was written against: another one is 409 stale_version.
    based_on_version: Annotated[int, Field(ge=1, le=INT4_MAX)] | None = None


def _svc(req: ApiRequest) -> NotesService:
    return req.request.app[NOTES]


NOTES_PATH = "/api/v1/patients/{patient_id}/notes"


@api.op(
    "GET",
    NOTES_PATH,
    operation_id="listPatientNotes",
    tag="patients",
    summary="Clinical notes on a patient, each at its newest version (clinical access, "
    "the patient)",
    action=Action.NOTE_LIST,
    query=PageQuery,
    response=NotePage,
)
async def list_notes(req: ApiRequest) -> NotePage:
    query = req.query(PageQuery)
    notes = await _svc(req).list_notes(
        req.principal,
        req.params["patient_id"],
        after=decode_cursor(query.cursor),
        limit=query.limit + 1,
        ip=req.ip,
    )
    page, cursor = cut_page(notes, query.limit)
    return NotePage(items=[Note.of(n) for n in page], next_cursor=cursor)


@api.op(
    "POST",
    NOTES_PATH,
    operation_id="createPatientNote",
    tag="patients",
    summary="Add a clinical note to a patient's record, optionally tied to a consultation",
    action=Action.NOTE_CREATE,
    body=NoteBody,
    response=Note,
    status=201,
    errors=(422,),
)
async def create_note(req: ApiRequest) -> Note:
    body = req.body(NoteBody)
    note = await _svc(req).create(
        req.principal,
        req.params["patient_id"],
        body.body,
        consultation_id=body.consultation_id,
        ip=req.ip,
    )
    return Note.of(note)


@api.op(
    "POST",
    NOTES_PATH + "/{note_id}/amendments",
    operation_id="amendPatientNote",
    tag="patients",
    summary="Amend a note: a new version that supersedes the newest one; nothing is edited",
    action=Action.NOTE_AMEND,
    body=AmendmentBody,
    response=Note,
    status=201,
    errors=(409,),
)
async def amend_note(req: ApiRequest) -> Note:
    body = req.body(AmendmentBody)
    note = await _svc(req).amend(
        req.principal,
        req.params["patient_id"],
        req.params["note_id"],
        body.body,
        based_on_version=body.based_on_version,
        ip=req.ip,
    )
    return Note.of(note)


@api.op(
    "GET",
    NOTES_PATH + "/{note_id}/versions",
    operation_id="listPatientNoteVersions",
    tag="patients",
    summary="Every version of a note, oldest first",
    action=Action.NOTE_READ,
    response=NoteHistory,
)
async def note_history(req: ApiRequest) -> NoteHistory:
    found = await _svc(req).history(
        req.principal, req.params["patient_id"], req.params["note_id"], ip=req.ip
    )
    return NoteHistory(items=[Note.of(n) for n in found])
