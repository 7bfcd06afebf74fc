"""HTTP transport for households and guardians."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field

from teleconsult.api.models import Body, Name
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.records.households.service import AdultBasis, HouseholdService
from teleconsult.records.households.store import HouseholdRecord, MemberRecord

HOUSEHOLDS = web.AppKey("record_households", HouseholdService)
api = Api()

Permission = Literal["read", "write", "consent"]
Kind = Literal["guardian", "dependant"]


class Member(BaseModel):
    user_id: UUID
    kind: Kind
    permissions: list[Permission]
    added_at: datetime
    removed_at: datetime | None

    @classmethod
    def of(cls, m: MemberRecord) -> Member:
        return cls(
            user_id=m.user_id,
            kind="guardian" if m.kind == "guardian" else "dependant",
            permissions=[p for p in ("read", "write", "consent") if p in m.permissions],
            added_at=m.added_at,
            removed_at=m.removed_at,
        )


class Household(BaseModel):
    id: UUID
    clinic_id: UUID
    label: str
    created_at: datetime
    members: list[Member]

    @classmethod
    def of(cls, h: HouseholdRecord, members: list[MemberRecord]) -> Household:
        return cls(
            id=h.id,
            clinic_id=h.clinic_id,
            label=h.label,
            created_at=h.created_at,
            members=[Member.of(m) for m in members],
        )


class HouseholdBody(Body):
    label: Name


class MemberBody(Body):
    user_id: UUID
    kind: Kind
    permissions: Annotated[list[Permission], Field(max_length=3)] = []
    adult_basis: AdultBasis | None = None


def _svc(req: ApiRequest) -> HouseholdService:
    return req.request.app[HOUSEHOLDS]


@api.op(
    "POST",
    "/api/v1/households",
    operation_id="createHousehold",
    tag="records",
    summary="A household: guardians and the dependants they act for (front desk, admins)",
    action=Action.HOUSEHOLD_MANAGE,
    body=HouseholdBody,
    response=Household,
    status=201,
)
async def create_household(req: ApiRequest) -> Household:
    household = await _svc(req).create(
        req.principal, label=req.body(HouseholdBody).label, ip=req.ip
    )
    return Household.of(household, [])


@api.op(
    "GET",
    "/api/v1/households/{household_id}",
    operation_id="getHousehold",
    tag="records",
    summary="A household and its members (clinic staff, its members)",
    action=Action.HOUSEHOLD_READ,
    response=Household,
)
async def get_household(req: ApiRequest) -> Household:
    household, members = await _svc(req).get(req.principal, req.params["household_id"], ip=req.ip)
    return Household.of(household, members)


@api.op(
    "POST",
    "/api/v1/households/{household_id}/members",
    operation_id="putHouseholdMember",
    tag="records",
    summary="Add a guardian, or a dependant with what guardians may do for them",
    action=Action.HOUSEHOLD_MANAGE,
    body=MemberBody,
    response=Member,
    errors=(422,),
)
async def put_member(req: ApiRequest) -> Member:
    body = req.body(MemberBody)
    member = await _svc(req).put_member(
        req.principal,
        req.params["household_id"],
        user_id=body.user_id,
        kind=body.kind,
        permissions=list(body.permissions),
        adult_basis=body.adult_basis,
        ip=req.ip,
    )
    return Member.of(member)


@api.op(
    "POST",
    "/api/v1/households/{household_id}/members/{user_id}/remove",
    operation_id="removeHouseholdMember",
    tag="records",
    summary="Remove a member: a guardian's access ends at the next request",
    action=Action.HOUSEHOLD_MANAGE,
    response=Member,
)
async def remove_member(req: ApiRequest) -> Member:
    member = await _svc(req).remove_member(
        req.principal, req.params["household_id"], req.params["user_id"], ip=req.ip
    )
    return Member.of(member)
