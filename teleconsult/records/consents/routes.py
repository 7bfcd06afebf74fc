"""HTTP transport for consents, care teams and break-glass."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, StringConstraints, model_validator

from teleconsult.api.models import Body, IsoDateTime
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.records.consents.service import ConsentService
from teleconsult.records.consents.store import CareTeamRecord, ConsentRecord

CONSENTS = web.AppKey("record_consents", ConsentService)
api = Api()

ConsentScope = Literal["all", "summary", "vitals", "notes", "medications", "documents"]
AccessScope = Literal["summary", "vitals", "notes", "medications", "documents"]


class Consent(BaseModel):
    id: UUID
    patient_id: UUID
    grantee_user_id: UUID | None
    grantee_clinic_id: UUID | None
    scope: ConsentScope
    granted_by: UUID
    granted_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: UUID | None

    @classmethod
    def of(cls, c: ConsentRecord) -> Consent:
        return cls.model_validate(c.__dict__)


class ConsentList(BaseModel):
    items: list[Consent]


class ConsentBody(Body):
    """Exactly one grantee: a clinician (user) or an organisation (clinic)."""

    grantee_user_id: UUID | None = None
    grantee_clinic_id: UUID | None = None
    scope: ConsentScope
    expires_at: IsoDateTime

    @model_validator(mode="after")
    def _one_grantee(self) -> ConsentBody:
        if (self.grantee_user_id is None) == (self.grantee_clinic_id is None):
            raise ValueError("give exactly one of grantee_user_id and grantee_clinic_id")
        return self


class CareTeamMember(BaseModel):
    id: UUID
    patient_id: UUID
    member_id: UUID
    starts_at: datetime
    ends_at: datetime
    added_by: UUID
    ended_at: datetime | None

    @classmethod
    def of(cls, c: CareTeamRecord) -> CareTeamMember:
        return cls.model_validate(c.__dict__)


class CareTeamList(BaseModel):
    items: list[CareTeamMember]


class CareTeamBody(Body):
    member_id: UUID
    ends_at: IsoDateTime


Reason = Annotated[str, StringConstraints(min_length=10, max_length=1000, pattern=r"\S")]


class BreakGlassBody(Body):
    reason: Reason
    scope: AccessScope = "summary"


class BreakGlassAccess(BaseModel):
    access_id: UUID
    patient_id: UUID
    expires_at: datetime


def _svc(req: ApiRequest) -> ConsentService:
    return req.request.app[CONSENTS]


CONSENTS_PATH = "/api/v1/patients/{patient_id}/consents"
CARE_PATH = "/api/v1/patients/{patient_id}/care-team"


@api.op(
    "POST",
    CONSENTS_PATH,
    operation_id="grantConsent",
    tag="records",
    summary="Let a clinician or an organisation see part of the record (patient or guardian)",
    action=Action.CONSENT_MANAGE,
    body=ConsentBody,
    response=Consent,
    status=201,
    errors=(422,),
)
async def grant_consent(req: ApiRequest) -> Consent:
    body = req.body(ConsentBody)
    consent = await _svc(req).grant(
        req.principal,
        req.params["patient_id"],
        grantee_user_id=body.grantee_user_id,
        grantee_clinic_id=body.grantee_clinic_id,
        scope=body.scope,
        expires_at=body.expires_at,
        ip=req.ip,
    )
    return Consent.of(consent)


@api.op(
    "GET",
    CONSENTS_PATH,
    operation_id="listConsents",
    tag="records",
    summary="The consents on a record, revoked and expired ones included",
    action=Action.CONSENT_MANAGE,
    response=ConsentList,
)
async def list_consents(req: ApiRequest) -> ConsentList:
    found = await _svc(req).list_consents(req.principal, req.params["patient_id"], ip=req.ip)
    return ConsentList(items=[Consent.of(c) for c in found])


@api.op(
    "POST",
    CONSENTS_PATH + "/{consent_id}/revoke",
    operation_id="revokeConsent",
    tag="records",
    summary="Revoke a consent: access on it ends at the next request",
    action=Action.CONSENT_MANAGE,
    response=Consent,
)
async def revoke_consent(req: ApiRequest) -> Consent:
    consent = await _svc(req).revoke(
        req.principal, req.params["patient_id"], req.params["consent_id"], ip=req.ip
    )
    return Consent.of(consent)


@api.op(
    "POST",
    CARE_PATH,
    operation_id="addCareTeamMember",
    tag="records",
    summary="Put a doctor or nurse on a patient's care team until a date (admins)",
    action=Action.CARE_TEAM_MANAGE,
    body=CareTeamBody,
    response=CareTeamMember,
    status=201,
    errors=(422,),
)
async def add_member(req: ApiRequest) -> CareTeamMember:
    body = req.body(CareTeamBody)
    member = await _svc(req).add_member(
        req.principal,
        req.params["patient_id"],
        member_id=body.member_id,
        ends_at=body.ends_at,
        ip=req.ip,
    )
    return CareTeamMember.of(member)


@api.op(
    "GET",
    CARE_PATH,
    operation_id="listCareTeam",
    tag="records",
    summary="A patient's care team memberships, ended ones included (admins)",
    action=Action.CARE_TEAM_MANAGE,
    response=CareTeamList,
)
async def list_members(req: ApiRequest) -> CareTeamList:
    found = await _svc(req).list_members(req.principal, req.params["patient_id"], ip=req.ip)
    return CareTeamList(items=[CareTeamMember.of(m) for m in found])


@api.op(
    "POST",
    CARE_PATH + "/{membership_id}/end",
    operation_id="endCareTeamMember",
    tag="records",
    summary="End a care team membership now (admins)",
    action=Action.CARE_TEAM_MANAGE,
    response=CareTeamMember,
)
async def end_member(req: ApiRequest) -> CareTeamMember:
    member = await _svc(req).end_member(
        req.principal, req.params["patient_id"], req.params["membership_id"], ip=req.ip
    )
    return CareTeamMember.of(member)


@api.op(
    "POST",
    "/api/v1/patients/{patient_id}/break-glass",
    operation_id="breakGlass",
    tag="records",
    summary="Emergency access to a record, with a reason: audited and told to the patient",
    action=Action.BREAK_GLASS,
    body=BreakGlassBody,
    response=BreakGlassAccess,
    status=201,
)
async def break_glass(req: ApiRequest) -> BreakGlassAccess:
    body = req.body(BreakGlassBody)
    basis, expires = await _svc(req).break_glass(
        req.principal, req.params["patient_id"], reason=body.reason, scope=body.scope, ip=req.ip
    )
    assert basis.ref is not None
    return BreakGlassAccess(access_id=basis.ref, patient_id=basis.patient_id, expires_at=expires)
