"""SQL for the FHIR views: one reader per resource type, streamed with asyncpg cursors.

Every reader takes a :class:`Reach` (whose rows the caller may get: the clinic,
optionally some patients, a doctor's own appointments, a doctor's patient panel)
and a :class:`Filter` (what a search or an export asked for), and yields
``(id, resource)`` pairs in id order. :func:`stream` must run inside a
transaction (asyncpg cursors need one); rows are fetched ``prefetch`` at a time,
so memory does not grow with the number of rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from teleconsult.accounts.records import ClinicRecord, UserRecord
from teleconsult.core.identity import Role
from teleconsult.fhir.clinical import consent_resource, observation_resource
from teleconsult.fhir.entities import (
    Visit,
    encounter_resource,
    organization_resource,
    patient_resource,
    practitioner_resource,
)
from teleconsult.fhir.views import appointment_resource
from teleconsult.records.fieldcrypt import ClinicKeys
from teleconsult.scheduling.records import Appointment, AppointmentStatus, ServiceKind

Resource = dict[str, Any]


@dataclass(frozen=True)
class Reach:
    """Whose rows may be read.

    ``patients``: only these patients' rows (None: every patient the rest allows).
    ``panel_doctor``: only patients with a care relationship with this doctor (an
    appointment with them that was not cancelled). ``own_doctor``: only this
    doctor's appointments and encounters (the scheduling scope of a doctor).
    """

    clinic_id: UUID
    patients: Sequence[UUID] | None = None
    panel_doctor: UUID | None = None
    own_doctor: UUID | None = None


@dataclass(frozen=True)
class Filter:
    """A search's or an export's conditions; all optional. Bounds are inclusive
    unless the ``*_strict`` flag says otherwise."""

    ids: Sequence[UUID] | None = None
    updated_after: datetime | None = None  # exclusive (_since, _lastUpdated=gt)
    updated_from: datetime | None = None  # inclusive (_lastUpdated=ge)
    updated_before: datetime | None = None  # exclusive (_lastUpdated=lt)
    updated_until: datetime | None = None  # inclusive (transactionTime, _lastUpdated=le)
    date_from: datetime | None = None  # inclusive
    date_before: datetime | None = None  # exclusive
    after_id: UUID | None = None  # paging: ids greater than this
    limit: int | None = None
    codes: Sequence[str] | None = None  # code=<LOINC> (Observation)
    statuses: Sequence[str] | None = None  # status=<FHIR code>


@dataclass
class _Sql:
    where: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


@dataclass(frozen=True)
class Table:
    """How one resource type is read: its SELECT, its key columns and its view."""

    resource_type: str
    select: str
    id_column: str
    clinic_column: str
    updated_column: str
    to_resource: Callable[[Mapping[str, Any]], Resource]
    patient_column: str | None = None  # None: not in a patient's compartment
    doctor_column: str | None = None
    date_column: str | None = None
    code_column: str | None = None
    base_where: tuple[str, ...] = ()
    # A FHIR status code computed in SQL (status=...).
    status_column: str | None = None
    # Encrypted rows: rendered with the clinic's keys, one row giving any number of
    # resources (record_tables.py); ``to_resource`` is then unused.
    keyed_view: Callable[[ClinicKeys, Mapping[str, Any]], list[Resource]] | None = None
    # Resource ids are ``<row id>-<suffix>`` rather than the row id itself.
    composite_ids: bool = False

    def render(self, row: Mapping[str, Any], keys: ClinicKeys | None) -> list[Resource]:
        """The resources of one row (decrypted with ``keys`` for keyed tables)."""
        if self.keyed_view is None:
            return [self.to_resource(row)]
        if keys is None:
            raise ValueError(f"{self.resource_type} rows need the clinic's keys")
        return self.keyed_view(keys, row)

    def query(self, reach: Reach, flt: Filter) -> tuple[str, list[Any]]:
        sql = _Sql(list(self.base_where))
        sql.where.append(f"{self.clinic_column} = {sql.arg(reach.clinic_id)}")
        if self.patient_column is not None:
            if reach.patients is not None:
                sql.where.append(f"{self.patient_column} = ANY({sql.arg(list(reach.patients))})")
            if reach.panel_doctor is not None:
                sql.where.append(
                    "EXISTS (SELECT 1 FROM appointments p WHERE "
                    f"p.patient_id = {self.patient_column} "
                    f"AND p.doctor_id = {sql.arg(reach.panel_doctor)} "
                    "AND p.status <> 'cancelled')"
                )
        if self.doctor_column is not None and reach.own_doctor is not None:
            sql.where.append(f"{self.doctor_column} = {sql.arg(reach.own_doctor)}")
        col = self.updated_column
        for bound, op in (
            (flt.updated_after, ">"),
            (flt.updated_from, ">="),
            (flt.updated_before, "<"),
            (flt.updated_until, "<="),
        ):
            if bound is not None:
                sql.where.append(f"{col} {op} {sql.arg(bound)}")
        if self.date_column is not None:
            if flt.date_from is not None:
                sql.where.append(f"{self.date_column} >= {sql.arg(flt.date_from)}")
            if flt.date_before is not None:
                sql.where.append(f"{self.date_column} < {sql.arg(flt.date_before)}")
        if self.code_column is not None and flt.codes is not None:
            sql.where.append(f"{self.code_column} = ANY({sql.arg(list(flt.codes))})")
        if self.status_column is not None and flt.statuses is not None:
            sql.where.append(f"{self.status_column} = ANY({sql.arg(list(flt.statuses))})")
        if flt.ids is not None:
            sql.where.append(f"{self.id_column} = ANY({sql.arg(list(flt.ids))})")
        if flt.after_id is not None:
            sql.where.append(f"{self.id_column} > {sql.arg(flt.after_id)}")
        text = f"{self.select} WHERE {' AND '.join(sql.where)} ORDER BY {self.id_column}"
        if flt.limit is not None:
            text += f" LIMIT {sql.arg(flt.limit)}"
        return text, sql.args


def _user(row: Mapping[str, Any]) -> UserRecord:
    return UserRecord(
        id=row["id"],
        clinic_id=row["clinic_id"],
        email=row["email"],
        role=Role(row["role"]),
        full_name=row["full_name"],
        phone=row["phone"],
        date_of_birth=row["date_of_birth"],
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _appointment(row: Mapping[str, Any]) -> Appointment:
    return Appointment(
        id=row["id"],
        clinic_id=row["clinic_id"],
        doctor_id=row["doctor_id"],
        patient_id=row["patient_id"],
        service=ServiceKind(row["service"]),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        buffer_minutes=row["buffer_minutes"],
        status=AppointmentStatus(row["status"]),
        cancel_reason=row["cancel_reason"],
        checked_in_at=row["checked_in_at"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
    )


_USER_SELECT = (
    "SELECT u.id, u.clinic_id, u.email, u.role::text AS role, u.full_name, u.phone, "
    "u.date_of_birth, u.status, u.created_at, u.updated_at FROM users u"
)
_APPOINTMENT_SELECT = (
    "SELECT a.id, a.clinic_id, a.doctor_id, a.patient_id, a.service::text AS service, "
    "a.starts_at, a.ends_at, a.buffer_minutes, a.status, a.cancel_reason, a.checked_in_at, "
    "a.created_by, a.created_at, a.updated_at, a.version"
)


def _appointment_view(base_url: str) -> Callable[[Mapping[str, Any]], Resource]:
    def view(row: Mapping[str, Any]) -> Resource:
        return appointment_resource(_appointment(row), base_url=base_url)

    return view


def _encounter(row: Mapping[str, Any]) -> Resource:
    return encounter_resource(
        Visit(_appointment(row), started_at=row["started_at"], ended_at=row["ended_at"])
    )


def tables(base_url: str) -> dict[str, Table]:
    """Every resource type read from the database, by FHIR type name."""
    return {
        "Organization": Table(
            "Organization",
            "SELECT c.id, c.name, c.timezone, c.created_at FROM clinics c",
            id_column="c.id",
            clinic_column="c.id",
            updated_column="c.created_at",
            to_resource=lambda row: organization_resource(ClinicRecord(**dict(row))),
        ),
        "Patient": Table(
            "Patient",
            _USER_SELECT,
            id_column="u.id",
            clinic_column="u.clinic_id",
            updated_column="u.updated_at",
            to_resource=lambda row: patient_resource(_user(row)),
            patient_column="u.id",
            base_where=("u.role = 'patient'",),
        ),
        "Practitioner": Table(
            "Practitioner",
            _USER_SELECT,
            id_column="u.id",
            clinic_column="u.clinic_id",
            updated_column="u.updated_at",
            to_resource=lambda row: practitioner_resource(_user(row)),
            base_where=("u.role IN ('doctor', 'nurse')",),
        ),
        "Appointment": Table(
            "Appointment",
            f"{_APPOINTMENT_SELECT} FROM appointments a",
            id_column="a.id",
            clinic_column="a.clinic_id",
            updated_column="a.updated_at",
            to_resource=_appointment_view(base_url),
            patient_column="a.patient_id",
            doctor_column="a.doctor_id",
            date_column="a.starts_at",
        ),
        "Encounter": Table(
            "Encounter",
            f"{_APPOINTMENT_SELECT}, c.started_at, c.ended_at FROM appointments a "
            "LEFT JOIN consultations c ON c.appointment_id = a.id",
            id_column="a.id",
            clinic_column="a.clinic_id",
            updated_column="a.updated_at",
            to_resource=_encounter,
            patient_column="a.patient_id",
            doctor_column="a.doctor_id",
            date_column="COALESCE(c.started_at, a.starts_at)",
            base_where=("a.status IN ('in_progress', 'completed')",),
        ),
        # Clinical records (migration 0016): the tables hold these columns in the
        # clear; encrypted ones (notes, profiles' allergies and conditions,
        # prescriptions) are not exported yet (docs/fhir.md).
        "Observation": Table(
            "Observation",
            "SELECT v.id, v.clinic_id, v.patient_id, v.kind, v.loinc, v.value, v.value2, "
            "v.unit, v.measured_at, v.recorded_by, v.source, v.created_at FROM vital_signs v",
            id_column="v.id",
            clinic_column="v.clinic_id",
            updated_column="v.created_at",
            to_resource=observation_resource,
            patient_column="v.patient_id",
            date_column="v.measured_at",
            code_column="v.loinc",
        ),
        "Consent": Table(
            "Consent",
            "SELECT c.id, c.clinic_id, c.patient_id, c.grantee_user_id, c.grantee_clinic_id, "
            "c.scope, c.granted_by, c.granted_at, c.expires_at, c.revoked_at FROM consents c",
            id_column="c.id",
            clinic_column="c.clinic_id",
            updated_column="COALESCE(c.revoked_at, c.granted_at)",
            to_resource=lambda row: consent_resource(row, now=datetime.now(UTC)),
            patient_column="c.patient_id",
            date_column="c.granted_at",
        ),
    }


async def stream(
    conn: asyncpg.Connection,
    table: Table,
    reach: Reach,
    flt: Filter,
    *,
    prefetch: int = 500,
    keys: ClinicKeys | None = None,
) -> AsyncIterator[tuple[UUID, Resource]]:
    """Yield ``(row id, resource)`` in row id order; run inside a transaction. Keyed
    tables need the clinic's ``keys``; decrypt only rows ``reach`` allows."""
    sql, args = table.query(reach, flt)
    async for row in conn.cursor(sql, *args, prefetch=prefetch):
        for resource in table.render(row, keys):
            yield row["id"], resource


async def fetch_rows(
    conn: asyncpg.Connection, table: Table, reach: Reach, flt: Filter
) -> list[asyncpg.Record]:
    """The raw rows (ciphertexts still sealed) of a small, limited query."""
    sql, args = table.query(reach, flt)
    rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return rows


async def fetch(
    conn: asyncpg.Connection,
    table: Table,
    reach: Reach,
    flt: Filter,
    *,
    keys: ClinicKeys | None = None,
) -> list[tuple[UUID, Resource]]:
    """The resources of a small, limited query at once (searches, reads)."""
    return [
        (row["id"], resource)
        for row in await fetch_rows(conn, table, reach, flt)
        for resource in table.render(row, keys)
    ]


async def patient_in_clinic(conn: asyncpg.Connection, clinic_id: UUID, patient_id: UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND clinic_id = $2 "
            "AND role = 'patient')",
            patient_id,
            clinic_id,
        )
    )


async def has_care_relationship(
    conn: asyncpg.Connection, doctor_id: UUID, patient_id: UUID
) -> bool:
    """An appointment of the patient with the doctor that was not cancelled."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM appointments WHERE doctor_id = $1 "
            "AND patient_id = $2 AND status <> 'cancelled')",
            doctor_id,
            patient_id,
        )
    )


async def clinical_candidates(
    conn: asyncpg.Connection, clinic_id: UUID, clinician_id: UUID
) -> list[UUID]:
    """Patients of the clinic a clinician may have a basis for (an appointment, a care
    team membership, a consent, a break-glass access); ``records.access`` decides."""
    rows = await conn.fetch(
        """
        SELECT patient_id FROM appointments WHERE doctor_id = $2 AND clinic_id = $1
        UNION SELECT patient_id FROM care_team_members WHERE member_id = $2 AND clinic_id = $1
        UNION SELECT patient_id FROM consents
            WHERE clinic_id = $1 AND (grantee_user_id = $2 OR grantee_clinic_id = $1)
        UNION SELECT patient_id FROM break_glass_accesses
            WHERE clinician_id = $2 AND clinic_id = $1
        ORDER BY 1
        """,
        clinic_id,
        clinician_id,
    )
    return [r["patient_id"] for r in rows]


async def doctor_in_clinic(conn: asyncpg.Connection, clinic_id: UUID, doctor_id: UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND clinic_id = $2 "
            "AND role = 'doctor')",
            doctor_id,
            clinic_id,
        )
    )
