"""The profile (demographic: sex, national id, emergency contacts; staff of the clinic,
the patient, a guardian) and the clinical summary (blood type, allergies, chronic
conditions; clinical access). The national id, the contacts, the allergies and the
conditions are encrypted; the national id also has a blind index for the front desk's
search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from teleconsult.audit import AuditEvent
from teleconsult.core.identity import Principal
from teleconsult.records.base import RecordsService
from teleconsult.records.fieldcrypt import ClinicKeys
from teleconsult.records.profiles import store
from teleconsult.records.profiles.store import ProfileRow

TABLE = "patient_profiles"
NATIONAL_ID = "national_id"


@dataclass(frozen=True)
class Profile:
    patient_id: UUID
    sex: str | None
    national_id: str | None
    emergency_contacts: list[dict[str, str]]
    updated_at: datetime | None


@dataclass(frozen=True)
class Summary:
    patient_id: UUID
    blood_type: str | None
    allergies: list[dict[str, str]]
    conditions: list[dict[str, str]]
    updated_at: datetime | None


def _open(keys: ClinicKeys, row: ProfileRow, column: str) -> Any:
    value: bytes | None = getattr(row, column)
    if value is None:
        return None
    return keys.decrypt_json(TABLE, column, row.patient_id, value)


def open_profile(keys: ClinicKeys, row: ProfileRow) -> Profile:
    return Profile(
        patient_id=row.patient_id,
        sex=row.sex,
        national_id=_open(keys, row, "national_id_ct"),
        emergency_contacts=_open(keys, row, "emergency_contacts_ct") or [],
        updated_at=row.updated_at,
    )


def open_summary(keys: ClinicKeys, row: ProfileRow) -> Summary:
    return Summary(
        patient_id=row.patient_id,
        blood_type=row.blood_type,
        allergies=_open(keys, row, "allergies_ct") or [],
        conditions=_open(keys, row, "conditions_ct") or [],
        updated_at=row.updated_at,
    )


Values = dict[str, object]  # columns of store.SETTABLE


def _profile_values(keys: ClinicKeys, patient_id: UUID, changes: dict[str, Any]) -> Values:
    values: Values = {}
    if "sex" in changes:
        values["sex"] = changes["sex"]
    if "national_id" in changes:
        national_id = changes["national_id"]
        values["national_id_ct"] = (
            None
            if national_id is None
            else keys.encrypt_json(TABLE, "national_id_ct", patient_id, national_id)
        )
        values["national_id_bi"] = (
            None if national_id is None else keys.blind_index(NATIONAL_ID, national_id)
        )
    if "emergency_contacts" in changes:
        values["emergency_contacts_ct"] = keys.encrypt_json(
            TABLE, "emergency_contacts_ct", patient_id, changes["emergency_contacts"]
        )
    return values


def _summary_values(keys: ClinicKeys, patient_id: UUID, changes: dict[str, Any]) -> Values:
    values: Values = {}
    if "blood_type" in changes:
        values["blood_type"] = changes["blood_type"]
    for name in ("allergies", "conditions"):
        if name in changes:
            values[f"{name}_ct"] = keys.encrypt_json(TABLE, f"{name}_ct", patient_id, changes[name])
    return values


class ProfileService(RecordsService):
    async def get_profile(
        self, principal: Principal, patient_id: UUID, *, ip: str | None
    ) -> Profile:
        keys, row = await self._read(principal, patient_id, "profile", ip=ip)
        return open_profile(keys, row)

    async def update_profile(
        self, principal: Principal, patient_id: UUID, changes: dict[str, Any], *, ip: str | None
    ) -> Profile:
        keys, row = await self._write(
            principal, patient_id, "profile", changes, _profile_values, ip=ip
        )
        return open_profile(keys, row)

    async def get_summary(
        self, principal: Principal, patient_id: UUID, *, ip: str | None
    ) -> Summary:
        keys, row = await self._read(principal, patient_id, "summary", ip=ip)
        return open_summary(keys, row)

    async def update_summary(
        self, principal: Principal, patient_id: UUID, changes: dict[str, Any], *, ip: str | None
    ) -> Summary:
        keys, row = await self._write(
            principal, patient_id, "summary", changes, _summary_values, ip=ip
        )
        return open_summary(keys, row)

    async def lookup(self, principal: Principal, *, national_id: str, ip: str | None) -> list[UUID]:
        """Patients of the caller's clinic with this national id (by blind index). The
        searched value is never logged or audited."""
        async with self._pool.acquire() as conn, conn.transaction():
            keys = await self._crypt.for_clinic(conn, principal.clinic_id)
            found = await store.find_by_national_id(
                conn, principal.clinic_id, keys.blind_index(NATIONAL_ID, national_id)
            )
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "patient.lookup",
                    "patient_list",
                    None,
                    ip=ip,
                    detail={"by": "national_id", "results": len(found)},
                ),
                conn,
            )
        return found

    # The profile and the summary are two parts (access scopes) of one row: read and
    # written alike, audited as ``<part>.read`` and ``<part>.update``.

    async def _read(
        self, principal: Principal, patient_id: UUID, part: str, *, ip: str | None
    ) -> tuple[ClinicKeys, ProfileRow]:
        async with self._access(principal, patient_id, part) as access:
            row = await store.get(access.conn, patient_id)
            await self._record(access, principal, f"{part}.read", ip=ip)
        return access.keys, row

    async def _write(
        self,
        principal: Principal,
        patient_id: UUID,
        part: str,
        changes: dict[str, Any],
        values_of: Callable[[ClinicKeys, UUID, dict[str, Any]], Values],
        *,
        ip: str | None,
    ) -> tuple[ClinicKeys, ProfileRow]:
        """Set the columns ``values_of`` makes of ``changes`` (none: the row as it is)."""
        async with self._access(principal, patient_id, part, need="write") as access:
            values = values_of(access.keys, patient_id, changes)
            if values:
                row = await store.upsert(
                    access.conn,
                    patient_id=patient_id,
                    clinic_id=access.basis.clinic_id,
                    by=principal.user_id,
                    values=values,
                )
            else:
                row = await store.get(access.conn, patient_id)
            await self._record(
                access,
                principal,
                f"{part}.update",
                ip=ip,
                fields=",".join(sorted(changes)) or "none",
            )
        return access.keys, row
