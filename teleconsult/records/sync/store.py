"""SQL of the records change feed (migration 0017, ``record_changes``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.records.access import APPOINTMENT_CLOSES, APPOINTMENT_OPENS
from teleconsult.records.careplans import store as careplans
from teleconsult.records.notes import store as notes
from teleconsult.records.prescriptions import store as rx
from teleconsult.records.profiles import store as profiles
from teleconsult.records.vitals import store as vitals

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class ChangeRow:
    seq: int
    patient_id: UUID
    kind: str
    object_id: UUID


# $1 caller, $2 caller's clinic, $3 role, $4 after seq, $5 limit. The patients the caller
# may have some basis on (a superset: each is checked again per part by access.py).
_CHANGES = f"""
WITH mine AS (
    SELECT $1::uuid AS patient_id WHERE $3 = 'patient'
    UNION
    SELECT d.user_id FROM household_members g
        JOIN household_members d ON d.household_id = g.household_id
    WHERE $3 = 'patient' AND g.user_id = $1 AND g.kind = 'guardian' AND g.removed_at IS NULL
        AND d.kind = 'dependant' AND d.removed_at IS NULL AND 'read' = ANY (d.permissions)
    UNION
    SELECT a.patient_id FROM appointments a
    WHERE $3 = 'doctor' AND a.doctor_id = $1 AND a.clinic_id = $2
        AND a.status IN ('confirmed', 'in_progress', 'completed')
        AND now() >= a.starts_at - interval '{int(APPOINTMENT_OPENS.total_seconds())} seconds'
        AND now() < a.ends_at + interval '{int(APPOINTMENT_CLOSES.total_seconds())} seconds'
    UNION
    SELECT c.patient_id FROM care_team_members c
    WHERE $3 IN ('doctor', 'nurse') AND c.member_id = $1 AND c.clinic_id = $2
        AND c.ended_at IS NULL AND now() >= c.starts_at AND now() < c.ends_at
    UNION
    SELECT c.patient_id FROM consents c
    WHERE $3 IN ('doctor', 'nurse') AND (c.grantee_user_id = $1 OR c.grantee_clinic_id = $2)
        AND c.revoked_at IS NULL AND now() < c.expires_at
    UNION
    SELECT b.patient_id FROM break_glass_accesses b
    WHERE $3 IN ('doctor', 'nurse') AND b.clinician_id = $1 AND now() < b.expires_at
)
SELECT ch.seq, ch.patient_id, ch.kind, ch.object_id FROM record_changes ch
WHERE ch.seq > $4 AND ch.patient_id IN (SELECT patient_id FROM mine)
ORDER BY ch.seq LIMIT $5
"""


async def changes(
    conn: Conn, *, user_id: UUID, clinic_id: UUID, role: str, after: int, limit: int
) -> list[ChangeRow]:
    rows = await conn.fetch(_CHANGES, user_id, clinic_id, role, after, limit)
    return [ChangeRow(**dict(row)) for row in rows]


@dataclass(frozen=True)
class _Part:
    """How to read the changed objects of one kind: its own store's row type and columns."""

    row: Callable[..., Any]
    select: str
    id_column: str = "id"  # the change's object id (a profile's is its patient's)


_PARTS: Final = {
    "note": _Part(notes.VersionRow, notes.SELECT_VERSIONS, id_column="v.id"),
    "vital": _Part(vitals.VitalRecord, f"SELECT {vitals.COLUMNS} FROM vital_signs"),
    "medication": _Part(rx.MedicationRow, f"SELECT {rx.MED_COLUMNS} FROM medication_statements"),
    "prescription": _Part(rx.PrescriptionRow, f"SELECT {rx.RX_COLUMNS} FROM prescriptions"),
    "profile": _Part(
        profiles.ProfileRow,
        f"SELECT {profiles.COLUMNS} FROM patient_profiles",
        id_column="patient_id",
    ),
    "care_plan": _Part(careplans.CarePlanRow, f"SELECT {careplans.COLUMNS} FROM care_plans"),
}
KINDS: Final = frozenset(_PARTS)


async def objects(conn: Conn, kind: str, ids: list[UUID]) -> dict[UUID, Any]:
    """The changed objects of one kind by their object ids."""
    if not ids:
        return {}
    part = _PARTS[kind]
    rows = await conn.fetch(f"{part.select} WHERE {part.id_column} = ANY($1::uuid[])", ids)
    key = part.id_column.rpartition(".")[2]
    return {row[key]: part.row(**dict(row)) for row in rows}
