"""SQL of the records change feed (migrations 0017 and 0022, ``record_changes``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Final, TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.records.access import APPOINTMENT_CLOSES, APPOINTMENT_OPENS
from teleconsult.records.careplans import store as careplans
from teleconsult.records.consents.store import CareTeamRecord, ConsentRecord
from teleconsult.records.documents.store import DocumentRow, VersionRow
from teleconsult.records.households.store import HouseholdRecord, MemberRecord
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


def _columns(row: Any) -> str:
    """The columns of a store's row dataclass (its fields are the table's columns)."""
    return ", ".join(f.name for f in fields(row))


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
    # --- records gaps (issue 14, part RG; migration 0022) ---
    "consent": _Part(ConsentRecord, f"SELECT {_columns(ConsentRecord)} FROM consents"),
    "care_team": _Part(CareTeamRecord, f"SELECT {_columns(CareTeamRecord)} FROM care_team_members"),
    "document": _Part(DocumentRow, f"SELECT {_columns(DocumentRow)} FROM documents"),
    "household": _Part(HouseholdRecord, f"SELECT {_columns(HouseholdRecord)} FROM households"),
}
KINDS: Final = frozenset(_PARTS)


async def objects(conn: Conn, kind: str, ids: list[UUID]) -> dict[UUID, Any]:
    """The changed objects of one kind by their object ids: a document with its versions
    (metadata only), a household with its members."""
    if not ids:
        return {}
    found = await _objects(conn, kind, ids)
    if kind == "document":
        rows = await conn.fetch(
            f"SELECT {_columns(VersionRow)} FROM document_versions "
            "WHERE document_id = ANY($1::uuid[]) ORDER BY document_id, version",
            list(found),
        )
        versions: dict[UUID, list[VersionRow]] = {}
        for row in rows:
            versions.setdefault(row["document_id"], []).append(VersionRow(**dict(row)))
        return {k: (doc, versions.get(k, [])) for k, doc in found.items()}
    if kind == "household":
        rows = await conn.fetch(
            f"SELECT {_columns(MemberRecord)} FROM household_members "
            "WHERE household_id = ANY($1::uuid[]) ORDER BY added_at, user_id",
            list(found),
        )
        members: dict[UUID, list[MemberRecord]] = {}
        for row in rows:
            members.setdefault(row["household_id"], []).append(MemberRecord(**dict(row)))
        return {k: (house, members.get(k, [])) for k, house in found.items()}
    return found


async def _objects(conn: Conn, kind: str, ids: list[UUID]) -> dict[UUID, Any]:
    part = _PARTS[kind]
    rows = await conn.fetch(f"{part.select} WHERE {part.id_column} = ANY($1::uuid[])", ids)
    key = part.id_column.rpartition(".")[2]
    return {row[key]: part.row(**dict(row)) for row in rows}
