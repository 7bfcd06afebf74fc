"""Vital signs: recorded by a clinician with access, by the patient (or a guardian
with write) or from a device; range-checked and LOINC-coded (``codes.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from teleconsult.core.errors import BadRequest, FieldError
from teleconsult.core.identity import Principal, Role
from teleconsult.records.base import RecordsService
from teleconsult.records.vitals import codes, store
from teleconsult.records.vitals.store import VitalRecord

CLOCK_SKEW = timedelta(minutes=5)


class VitalsService(RecordsService):
    async def record(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        kind: str,
        value: float,
        value2: float | None,
        unit: str,
        measured_at: datetime,
        source: str | None,
        ip: str | None,
    ) -> VitalRecord:
        loinc = codes.check(kind, unit, value, value2)
        if measured_at > datetime.now(UTC) + CLOCK_SKEW:
            raise BadRequest(
                "measured in the future", fields=[FieldError("body.measured_at", "in the future")]
            )
        mine = "patient" if principal.role is Role.PATIENT else "clinician"
        if source not in (None, "device", mine):
            raise BadRequest(
                "wrong source", fields=[FieldError("body.source", f"'{mine}' or 'device'")]
            )
        async with self._access(principal, patient_id, "vitals", need="write") as access:
            vital = await store.insert(
                access.conn,
                clinic_id=access.basis.clinic_id,
                patient_id=patient_id,
                kind=kind,
                loinc=loinc,
                value=value,
                value2=value2,
                unit=unit,
                measured_at=measured_at,
                recorded_by=principal.user_id,
                source=source or mine,
            )
            await self._record(
                access,
                principal,
                "vitals.create",
                ip=ip,
                object_type="vital_sign",
                object_id=vital.id,
                kind=kind,
            )
        return vital

    async def list_vitals(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        kind: str | None,
        after: tuple[datetime, UUID] | None,
        limit: int,
        ip: str | None,
    ) -> list[VitalRecord]:
        async with self._access(principal, patient_id, "vitals") as access:
            found = await store.page(
                access.conn, patient_id=patient_id, kind=kind, after=after, limit=limit
            )
            await self._record(access, principal, "vitals.read", ip=ip, results=len(found))
        return found
