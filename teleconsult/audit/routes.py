"""HTTP transport for a clinic admin's view of the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field

from teleconsult.api.models import Limit
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.audit import AuditRecord, AuditTrail
from teleconsult.core.policy import Action

AUDIT_TRAIL = web.AppKey("audit_trail", AuditTrail)
api = Api()


class AuditEntry(BaseModel):
    seq: int
    occurred_at: datetime
    action: str
    outcome: str
    actor_id: UUID | None
    actor_role: str | None
    object_type: str | None
    object_id: str | None
    ip: str | None
    detail: dict[str, str | int | bool | None]
    hash: str

    @classmethod
    def of(cls, record: AuditRecord) -> AuditEntry:
        return cls(
            seq=record.seq,
            occurred_at=record.occurred_at,
            action=record.action,
            outcome=record.outcome,
            actor_id=record.actor_id,
            actor_role=record.actor_role,
            object_type=record.object_type,
            object_id=record.object_id,
            ip=record.ip,
            detail=dict(record.detail),
            hash=record.hash.hex(),
        )


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None


class AuditQuery(BaseModel):
    cursor: Annotated[str, Field(pattern=r"^[0-9]{1,18}$")] | None = None
    limit: Limit = 50


@api.op(
    "GET",
    "/api/v1/audit",
    operation_id="listAudit",
    summary="The audit trail of the caller's clinic, oldest first",
    tag="audit",
    action=Action.AUDIT_LIST,
    query=AuditQuery,
    response=AuditPage,
)
async def list_audit(req: ApiRequest) -> AuditPage:
    """The cursor is the last seen sequence number; rows are chained by SHA-256
    (`teleconsult audit verify` checks the chain and its signed checkpoints). An
    event is listed once the sequencer has chained it, normally within 100 ms."""
    query = req.query(AuditQuery)
    after = int(query.cursor) if query.cursor else None
    records = await req.request.app[AUDIT_TRAIL].list_for_clinic(
        clinic_id=req.principal.clinic_id, after=after, limit=query.limit + 1
    )
    page = records[: query.limit]
    cursor = str(page[-1].seq) if len(records) > query.limit else None
    return AuditPage(items=[AuditEntry.of(r) for r in page], next_cursor=cursor)
