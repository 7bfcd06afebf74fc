"""HTTP transport for patient records."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, StringConstraints

from teleconsult.accounts.records import UserRecord
from teleconsult.api.models import IsoDate, Name, PageQuery, Patch, Phone
from teleconsult.api.pagination import cut_page, decode_cursor
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.records.service import PatientService

PATIENTS = web.AppKey("patients", PatientService)
api = Api()


class Patient(BaseModel):
    id: UUID
    clinic_id: UUID
    email: str
    full_name: str
    phone: str | None
    date_of_birth: date | None
    status: Literal["active", "disabled"]
    created_at: datetime

    @classmethod
    def of(cls, user: UserRecord) -> Patient:
        return cls(
            id=user.id,
            clinic_id=user.clinic_id,
            email=user.email,
            full_name=user.full_name,
            phone=user.phone,
            date_of_birth=user.date_of_birth,
            status="active" if user.status == "active" else "disabled",
            created_at=user.created_at,
        )


class PatientPage(BaseModel):
    items: list[Patient]
    next_cursor: str | None


class PatientQuery(PageQuery):
    q: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


class PatientPatch(Patch):
    nullable_fields = {"phone", "date_of_birth"}
    full_name: Name | None = None
    phone: Phone | None = None
    date_of_birth: IsoDate | None = None


def _svc(req: ApiRequest) -> PatientService:
    return req.request.app[PATIENTS]


@api.op(
    "GET",
    "/api/v1/patients",
    operation_id="listPatients",
    summary="Patients of the caller's clinic, optionally searched by name or phone",
    tag="patients",
    action=Action.PATIENT_LIST,
    query=PatientQuery,
    response=PatientPage,
)
async def list_patients(req: ApiRequest) -> PatientPage:
    query = req.query(PatientQuery)
    found = await _svc(req).search(
        req.principal,
        text=query.q,
        after=decode_cursor(query.cursor),
        limit=query.limit,
        ip=req.ip,
    )
    page, cursor = cut_page(found, query.limit)
    return PatientPage(items=[Patient.of(p) for p in page], next_cursor=cursor)


@api.op(
    "GET",
    "/api/v1/patients/{patient_id}",
    operation_id="getPatient",
    summary="A patient's record (staff of their clinic, or the patient)",
    tag="patients",
    action=Action.PATIENT_READ,
    response=Patient,
)
async def get_patient(req: ApiRequest) -> Patient:
    return Patient.of(await _svc(req).get(req.principal, req.params["patient_id"], ip=req.ip))


@api.op(
    "PATCH",
    "/api/v1/patients/{patient_id}",
    operation_id="updatePatient",
    summary="Change a patient's demographics",
    tag="patients",
    action=Action.PATIENT_UPDATE,
    body=PatientPatch,
    response=Patient,
)
async def update_patient(req: ApiRequest) -> Patient:
    changes = req.body(PatientPatch).changes()
    patient = await _svc(req).update(req.principal, req.params["patient_id"], changes, ip=req.ip)
    return Patient.of(patient)
