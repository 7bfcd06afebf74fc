"""SQL of the records change feed (migration 0017, ``record_changes``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.records.access import APPOINTMENT_CLOSES, APPOINTMENT_OPENS
from teleconsult.records.careplans.store import CarePlanRow
from teleconsult.records.notes.store import VersionRow
from teleconsult.records.prescriptions.store import MedicationRow, PrescriptionRow
from teleconsult.records.profiles.store import ProfileRow
from teleconsult.records.vitals.store import VitalRecord

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


async def notes(conn: Conn, ids: list[UUID]) -> list[VersionRow]:
    rows = await conn.fetch(
        "SELECT v.id, v.note_id, v.version, v.patient_id, v.consultation_id, v.author_id, "
        "v.body_ct, v.supersedes, v.created_at, f.created_at AS note_created_at "
        "FROM clinical_note_versions v JOIN clinical_note_versions f "
        "ON f.note_id = v.note_id AND f.version = 1 WHERE v.id = ANY($1::uuid[])",
        ids,
    )
    return [VersionRow(**dict(row)) for row in rows]


async def vitals(conn: Conn, ids: list[UUID]) -> list[VitalRecord]:
    rows = await conn.fetch(
        "SELECT id, patient_id, kind, loinc, value, value2, unit, measured_at, recorded_by, "
        "source, created_at FROM vital_signs WHERE id = ANY($1::uuid[])",
        ids,
    )
    return [VitalRecord(**dict(row)) for row in rows]


async def medications(conn: Conn, ids: list[UUID]) -> list[MedicationRow]:
    rows = await conn.fetch(
        "SELECT id, patient_id, details_ct, status, recorded_by, created_at "
        "FROM medication_statements WHERE id = ANY($1::uuid[])",
        ids,
    )
    return [MedicationRow(**dict(row)) for row in rows]


async def prescriptions(conn: Conn, ids: list[UUID]) -> list[PrescriptionRow]:
    rows = await conn.fetch(
        "SELECT id, clinic_id, patient_id, doctor_id, number, document_ct, signature, "
        "device_id, signer_public_key, issued_at, expires_at, cancelled_at, created_at "
        "FROM prescriptions WHERE id = ANY($1::uuid[])",
        ids,
    )
    return [PrescriptionRow(**dict(row)) for row in rows]


async def profiles(conn: Conn, ids: list[UUID]) -> list[ProfileRow]:
    rows = await conn.fetch(
        "SELECT patient_id, sex, national_id_ct, emergency_contacts_ct, blood_type, "
        "allergies_ct, conditions_ct, updated_at FROM patient_profiles "
        "WHERE patient_id = ANY($1::uuid[])",
        ids,
    )
    return [ProfileRow(**dict(row)) for row in rows]


async def care_plans(conn: Conn, ids: list[UUID]) -> list[CarePlanRow]:
    rows = await conn.fetch(
        "SELECT id, patient_id, author_id, plan_ct, starts_on, expires_at, ended_at, created_at "
        "FROM care_plans WHERE id = ANY($1::uuid[])",
        ids,
    )
    return [CarePlanRow(**dict(row)) for row in rows]
