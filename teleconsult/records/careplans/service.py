"""Care plans: goals and activities for a patient, written by a clinician with access,
always with an expiry; ended early or left to expire, never edited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from teleconsult.core.errors import FieldError, NotFound, Unprocessable
from teleconsult.core.identity import Principal
from teleconsult.records.base import RecordsService
from teleconsult.records.careplans import store
from teleconsult.records.careplans.store import CarePlanRow
from teleconsult.records.fieldcrypt import ClinicKeys

TABLE, COLUMN = "care_plans", "plan_ct"
LONGEST = timedelta(days=2 * 365)


@dataclass(frozen=True)
class CarePlan:
    id: UUID
    patient_id: UUID
    author_id: UUID
    plan: dict[str, Any]
    starts_on: date
    expires_at: datetime
    ended_at: datetime | None
    status: str
    created_at: datetime


def open_plan(keys: ClinicKeys, row: CarePlanRow) -> CarePlan:
    now = datetime.now(UTC)
    status = "ended" if row.ended_at else ("expired" if row.expires_at <= now else "active")
    return CarePlan(
        id=row.id,
        patient_id=row.patient_id,
        author_id=row.author_id,
        plan=keys.decrypt_json(TABLE, COLUMN, row.id, row.plan_ct),
        starts_on=row.starts_on,
        expires_at=row.expires_at,
        ended_at=row.ended_at,
        status=status,
        created_at=row.created_at,
    )


class CarePlanService(RecordsService):
    async def create(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        plan: dict[str, Any],
        starts_on: date,
        expires_at: datetime,
        ip: str | None,
    ) -> CarePlan:
        now = datetime.now(UTC)
        if not now < expires_at <= now + LONGEST:
            raise Unprocessable(
                "a care plan expires in the future, within two years",
                fields=[FieldError("body.expires_at", "in the past or too far ahead")],
            )
        if starts_on > expires_at.date():
            raise Unprocessable(
                "starts after it expires", fields=[FieldError("body.starts_on", "after expiry")]
            )
        async with self._access(principal, patient_id, "summary", need="write") as access:
            plan_id = uuid4()
            row = await store.insert(
                access.conn,
                plan_id=plan_id,
                clinic_id=access.basis.clinic_id,
                patient_id=patient_id,
                author_id=principal.user_id,
                plan_ct=access.keys.encrypt_json(TABLE, COLUMN, plan_id, plan),
                starts_on=starts_on,
                expires_at=expires_at,
            )
            await self._record(
                access,
                principal,
                "care_plan.create",
                ip=ip,
                object_type="care_plan",
                object_id=row.id,
            )
        return open_plan(access.keys, row)

    async def list_plans(
        self, principal: Principal, patient_id: UUID, *, ip: str | None
    ) -> list[CarePlan]:
        async with self._access(principal, patient_id, "summary") as access:
            rows = await store.for_patient(access.conn, patient_id)
            await self._record(access, principal, "care_plan.list", ip=ip, results=len(rows))
        return [open_plan(access.keys, row) for row in rows]

    async def end(
        self, principal: Principal, patient_id: UUID, plan_id: UUID, *, ip: str | None
    ) -> CarePlan:
        async with self._access(principal, patient_id, "summary", need="write") as access:
            row = await store.end(access.conn, patient_id, plan_id)
            if row is None:
                raise NotFound("care plan not found")
            await self._record(
                access,
                principal,
                "care_plan.end",
                ip=ip,
                object_type="care_plan",
                object_id=row.id,
            )
        return open_plan(access.keys, row)
