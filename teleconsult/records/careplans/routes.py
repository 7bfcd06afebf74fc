"""HTTP transport for care plans."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from teleconsult.api.models import Body, IsoDate, IsoDateTime
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.records.careplans.service import CarePlan, CarePlanService

CARE_PLANS = web.AppKey("record_care_plans", CarePlanService)
api = Api()

Line = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"\S")]


class Plan(Body):
    title: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
    goals: Annotated[list[Line], Field(max_length=30)] = []
    activities: Annotated[list[Line], Field(max_length=50)] = []


class CarePlanBody(Body):
    plan: Plan
    starts_on: IsoDate
    expires_at: IsoDateTime


class CarePlanOut(BaseModel):
    id: UUID
    patient_id: UUID
    author_id: UUID
    plan: Plan
    starts_on: date
    expires_at: datetime
    ended_at: datetime | None
    status: Literal["active", "expired", "ended"]
    created_at: datetime

    @classmethod
    def of(cls, p: CarePlan) -> CarePlanOut:
        return cls.model_validate(p.__dict__)


class CarePlanList(BaseModel):
    items: list[CarePlanOut]


def _svc(req: ApiRequest) -> CarePlanService:
    return req.request.app[CARE_PLANS]


PATH = "/api/v1/patients/{patient_id}/care-plans"


@api.op(
    "POST",
    PATH,
    operation_id="createCarePlan",
    tag="records",
    summary="A care plan with an expiry (clinicians with access)",
    action=Action.CARE_PLAN_WRITE,
    body=CarePlanBody,
    response=CarePlanOut,
    status=201,
    errors=(422,),
)
async def create_plan(req: ApiRequest) -> CarePlanOut:
    body = req.body(CarePlanBody)
    plan = await _svc(req).create(
        req.principal,
        req.params["patient_id"],
        plan=body.plan.model_dump(),
        starts_on=body.starts_on,
        expires_at=body.expires_at,
        ip=req.ip,
    )
    return CarePlanOut.of(plan)


@api.op(
    "GET",
    PATH,
    operation_id="listCarePlans",
    tag="records",
    summary="A patient's care plans with their status",
    action=Action.CARE_PLAN_READ,
    response=CarePlanList,
)
async def list_plans(req: ApiRequest) -> CarePlanList:
    found = await _svc(req).list_plans(req.principal, req.params["patient_id"], ip=req.ip)
    return CarePlanList(items=[CarePlanOut.of(p) for p in found])


@api.op(
    "POST",
    PATH + "/{plan_id}/end",
    operation_id="endCarePlan",
    tag="records",
    summary="End a care plan before it expires",
    action=Action.CARE_PLAN_WRITE,
    response=CarePlanOut,
)
async def end_plan(req: ApiRequest) -> CarePlanOut:
    plan = await _svc(req).end(
        req.principal, req.params["patient_id"], req.params["plan_id"], ip=req.ip
    )
    return CarePlanOut.of(plan)
