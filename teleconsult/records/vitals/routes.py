"""HTTP transport for vital signs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field

from teleconsult.api.models import Body, IsoDateTime, PageQuery
from teleconsult.api.pagination import decode_cursor, encode_cursor
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.records.vitals.codes import KINDS
from teleconsult.records.vitals.service import VitalsService
from teleconsult.records.vitals.store import VitalRecord

VITALS = web.AppKey("record_vitals", VitalsService)
api = Api()

VitalKind = Literal[
    "blood_pressure",
    "heart_rate",
    "temperature",
    "spo2",
    "weight",
    "height",
    "respiratory_rate",
    "glucose",
]
assert set(VitalKind.__args__) == set(KINDS)  # type: ignore[attr-defined]
Unit = Literal["mm[Hg]", "/min", "Cel", "%", "kg", "cm", "mg/dL", "mmol/L"]
Number = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]


class Vital(BaseModel):
    id: UUID
    patient_id: UUID
    kind: VitalKind
    loinc: str
    value: float
    value2: float | None
    unit: Unit
    measured_at: datetime
    recorded_by: UUID
    source: Literal["clinician", "patient", "device"]
    created_at: datetime

    @classmethod
    def of(cls, v: VitalRecord) -> Vital:
        values = dict(v.__dict__)
        values["value"] = float(v.value)
        values["value2"] = None if v.value2 is None else float(v.value2)
        return cls.model_validate(values)


class VitalPage(BaseModel):
    items: list[Vital]
    next_cursor: str | None


class VitalBody(Body):
    kind: VitalKind
    value: Number
    value2: Number | None = None
    unit: Unit
    measured_at: IsoDateTime
    source: Literal["clinician", "patient", "device"] | None = None


class VitalQuery(PageQuery):
    kind: VitalKind | None = None


def _svc(req: ApiRequest) -> VitalsService:
    return req.request.app[VITALS]


PATH = "/api/v1/patients/{patient_id}/vitals"


@api.op(
    "POST",
    PATH,
    operation_id="recordVitalSign",
    tag="records",
    summary="Record a vital sign (impossible values are refused with 400 naming the field)",
    action=Action.VITALS_WRITE,
    body=VitalBody,
    response=Vital,
    status=201,
)
async def record_vital(req: ApiRequest) -> Vital:
    body = req.body(VitalBody)
    vital = await _svc(req).record(
        req.principal,
        req.params["patient_id"],
        kind=body.kind,
        value=body.value,
        value2=body.value2,
        unit=body.unit,
        measured_at=body.measured_at,
        source=body.source,
        ip=req.ip,
    )
    return Vital.of(vital)


@api.op(
    "GET",
    PATH,
    operation_id="listVitalSigns",
    tag="records",
    summary="A patient's vital signs, oldest first, optionally of one kind",
    action=Action.VITALS_READ,
    query=VitalQuery,
    response=VitalPage,
)
async def list_vitals(req: ApiRequest) -> VitalPage:
    query = req.query(VitalQuery)
    found = await _svc(req).list_vitals(
        req.principal,
        req.params["patient_id"],
        kind=query.kind,
        after=decode_cursor(query.cursor),
        limit=query.limit + 1,
        ip=req.ip,
    )
    page = found[: query.limit]
    cursor = None
    if len(found) > query.limit:  # keyed by measured_at, not created_at
        cursor = encode_cursor(page[-1].measured_at, page[-1].id)
    return VitalPage(items=[Vital.of(v) for v in page], next_cursor=cursor)
