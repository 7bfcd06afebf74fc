"""HTTP transport for the records change feed."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field

from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.records.careplans.routes import CarePlanOut
from teleconsult.records.consents.routes import CareTeamMember, Consent
from teleconsult.records.documents.routes import DocumentOut
from teleconsult.records.households.routes import Household
from teleconsult.records.notes.routes import Note
from teleconsult.records.prescriptions.routes import MedicationOut, PrescriptionOut
from teleconsult.records.profiles.routes import ProfileOut, SummaryOut
from teleconsult.records.sync.service import Change, SyncService
from teleconsult.records.vitals.routes import Vital

SYNC = web.AppKey("record_sync", SyncService)
api = Api()


class SyncQuery(BaseModel):
    # The cursor of the previous page (``next_cursor``); 0 or absent: from the start.
    since: Annotated[int, Field(ge=0, le=2**62)] = 0
    limit: Annotated[int, Field(ge=1, le=500)] = 200


class SyncChange(BaseModel):
    seq: int
    kind: Literal[
        "note",
        "vital",
        "medication",
        "prescription",
        "profile",
        "care_plan",
        "document",
        "consent",
        "household",
        "care_team",
    ]
    patient_id: UUID
    id: UUID
    # The object as its own route answers it; a profile is {profile, clinical_summary}
    # (clinical_summary null without clinical access); a document its metadata and
    # versions (never its content); a household its members.
    data: dict[str, Any]

    @classmethod
    def of(cls, change: Change) -> SyncChange:
        d = change.data
        data: dict[str, Any]
        match change.kind:
            case "note":
                data = Note.of(d).model_dump(mode="json")
            case "vital":
                data = Vital.of(d).model_dump(mode="json")
            case "medication":
                data = MedicationOut.of(d).model_dump(mode="json")
            case "prescription":
                data = PrescriptionOut.of(d).model_dump(mode="json")
            case "profile":
                profile, summary = d
                data = {
                    "profile": ProfileOut.of(profile).model_dump(mode="json"),
                    "clinical_summary": (
                        None if summary is None else SummaryOut.of(summary).model_dump(mode="json")
                    ),
                }
            case "care_plan":
                data = CarePlanOut.of(d).model_dump(mode="json")
            case "document":
                data = DocumentOut.of(d).model_dump(mode="json")
            case "consent":
                data = Consent.of(d).model_dump(mode="json")
            case "household":
                data = Household.of(*d).model_dump(mode="json")
            case _:
                data = CareTeamMember.of(d).model_dump(mode="json")
        return cls(
            seq=change.seq,
            kind=change.kind,  # type: ignore[arg-type]
            patient_id=change.patient_id,
            id=change.object_id,
            data=data,
        )


class SyncAnswer(BaseModel):
    changes: list[SyncChange]
    next_cursor: int
    # True when the feed had nothing more after this page (for now).
    complete: bool


@api.op(
    "GET",
    "/api/v1/sync",
    operation_id="syncRecords",
    tag="records",
    summary="Changes to the records the caller may see after a cursor, in pages (offline apps)",
    action=Action.RECORD_SYNC,
    query=SyncQuery,
    response=SyncAnswer,
)
async def sync(req: ApiRequest) -> SyncAnswer:
    query = req.query(SyncQuery)
    page = await req.request.app[SYNC].page(
        req.principal, after=query.since, limit=query.limit, ip=req.ip
    )
    return SyncAnswer(
        changes=[SyncChange.of(c) for c in page.changes],
        next_cursor=page.cursor,
        complete=page.complete,
    )
