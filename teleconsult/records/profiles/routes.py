"""HTTP transport for the profile, the clinical summary and the national-id lookup."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from teleconsult.api.models import Body, Name, Patch, Phone
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.records.profiles.service import Profile, ProfileService, Summary

PROFILES = web.AppKey("record_profiles", ProfileService)
api = Api()

Sex = Literal["female", "male", "other", "unknown"]
BloodType = Literal["A+", "A-", "B+", "B-", "AB+", "AB-", "O+", "O-"]
NationalId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=40, pattern=r"\w")
]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Severity = Literal["mild", "moderate", "severe", "unknown"]


class EmergencyContact(Body):
    name: Name
    relation: Annotated[str, StringConstraints(min_length=1, max_length=50)]
    phone: Phone


class Allergy(Body):
    substance: Text
    reaction: Text | None = None
    severity: Severity = "unknown"


class Condition(Body):
    name: Text
    since: Annotated[str, StringConstraints(pattern=r"^\d{4}(-\d{2}(-\d{2})?)?$")] | None = None


class ProfileOut(BaseModel):
    patient_id: UUID
    sex: Sex | None
    national_id: str | None
    emergency_contacts: list[EmergencyContact]
    updated_at: datetime | None

    @classmethod
    def of(cls, p: Profile) -> ProfileOut:
        return cls.model_validate(p.__dict__)


class ProfilePatch(Patch):
    nullable_fields = {"sex", "national_id"}
    sex: Sex | None = None
    national_id: NationalId | None = None
    emergency_contacts: Annotated[list[EmergencyContact], Field(max_length=5)] | None = None


class SummaryOut(BaseModel):
    patient_id: UUID
    blood_type: BloodType | None
    allergies: list[Allergy]
    conditions: list[Condition]
    updated_at: datetime | None

    @classmethod
    def of(cls, s: Summary) -> SummaryOut:
        return cls.model_validate(s.__dict__)


class SummaryPatch(Patch):
    nullable_fields = {"blood_type"}
    blood_type: BloodType | None = None
    allergies: Annotated[list[Allergy], Field(max_length=50)] | None = None
    conditions: Annotated[list[Condition], Field(max_length=50)] | None = None


class LookupQuery(BaseModel):
    national_id: NationalId


class LookupResult(BaseModel):
    patient_ids: list[UUID]


def _svc(req: ApiRequest) -> ProfileService:
    return req.request.app[PROFILES]


PROFILE = "/api/v1/patients/{patient_id}/profile"
SUMMARY = "/api/v1/patients/{patient_id}/clinical-summary"


@api.op(
    "GET",
    PROFILE,
    operation_id="getPatientProfile",
    tag="records",
    summary="Sex, national id and emergency contacts (clinic staff, the patient, a guardian)",
    action=Action.PROFILE_READ,
    response=ProfileOut,
)
async def get_profile(req: ApiRequest) -> ProfileOut:
    return ProfileOut.of(
        await _svc(req).get_profile(req.principal, req.params["patient_id"], ip=req.ip)
    )


@api.op(
    "PATCH",
    PROFILE,
    operation_id="updatePatientProfile",
    tag="records",
    summary="Change the profile (front desk, admins, the patient, a guardian with write)",
    action=Action.PROFILE_WRITE,
    body=ProfilePatch,
    response=ProfileOut,
)
async def update_profile(req: ApiRequest) -> ProfileOut:
    body = req.body(ProfilePatch)
    changes = body.changes()
    if "emergency_contacts" in changes:
        changes["emergency_contacts"] = [c.model_dump() for c in body.emergency_contacts or []]
    profile = await _svc(req).update_profile(
        req.principal, req.params["patient_id"], changes, ip=req.ip
    )
    return ProfileOut.of(profile)


@api.op(
    "GET",
    SUMMARY,
    operation_id="getClinicalSummary",
    tag="records",
    summary="Blood type, allergies and chronic conditions (clinical access, the patient)",
    action=Action.SUMMARY_READ,
    response=SummaryOut,
)
async def get_summary(req: ApiRequest) -> SummaryOut:
    return SummaryOut.of(
        await _svc(req).get_summary(req.principal, req.params["patient_id"], ip=req.ip)
    )


@api.op(
    "PATCH",
    SUMMARY,
    operation_id="updateClinicalSummary",
    tag="records",
    summary="Change the clinical summary (clinicians with access)",
    action=Action.SUMMARY_WRITE,
    body=SummaryPatch,
    response=SummaryOut,
)
async def update_summary(req: ApiRequest) -> SummaryOut:
    body = req.body(SummaryPatch)
    changes = body.changes()
    for name in ("allergies", "conditions"):
        if name in changes:
            changes[name] = [item.model_dump() for item in getattr(body, name) or []]
    summary = await _svc(req).update_summary(
        req.principal, req.params["patient_id"], changes, ip=req.ip
    )
    return SummaryOut.of(summary)


@api.op(
    "GET",
    "/api/v1/patient-lookup",
    operation_id="lookupPatient",
    tag="records",
    summary="Find the clinic's patients by national id (blind index; staff)",
    action=Action.PATIENT_LOOKUP,
    query=LookupQuery,
    response=LookupResult,
)
async def lookup(req: ApiRequest) -> LookupResult:
    query = req.query(LookupQuery)
    found = await _svc(req).lookup(req.principal, national_id=query.national_id, ip=req.ip)
    return LookupResult(patient_ids=found)
