"""SQL of vital signs (migration 0016)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class VitalRecord:
    id: UUID
    patient_id: UUID
    kind: str
    loinc: str
    value: Decimal
    value2: Decimal | None
    unit: str
    measured_at: datetime
    recorded_by: UUID
    source: str
    created_at: datetime


COLUMNS = (
    "id, patient_id, kind, loinc, value, value2, unit, measured_at, recorded_by, source, created_at"
)


async def insert(
    conn: Conn,
    *,
    clinic_id: UUID,
    patient_id: UUID,
    kind: str,
    loinc: str,
    value: float,
    value2: float | None,
    unit: str,
    measured_at: datetime,
    recorded_by: UUID,
    source: str,
) -> VitalRecord:
    row = await conn.fetchrow(
        f"INSERT INTO vital_signs (clinic_id, patient_id, kind, loinc, value, value2, unit, "
        f"measured_at, recorded_by, source) VALUES ($1, $2, $3, $4, $5::float8, $6::float8, "
        f"$7, $8, $9, $10) RETURNING {COLUMNS}",
        clinic_id,
        patient_id,
        kind,
        loinc,
        value,
        value2,
        unit,
        measured_at,
        recorded_by,
        source,
    )
    assert row is not None
    return VitalRecord(**dict(row))


async def page(
    conn: Conn,
    *,
    patient_id: UUID,
    kind: str | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[VitalRecord]:
    """Oldest first by (measured_at, id), after the cursor."""
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS} FROM vital_signs
        WHERE patient_id = $1 AND ($2::text IS NULL OR kind = $2)
            AND ($3::timestamptz IS NULL OR (measured_at, id) > ($3, $4))
        ORDER BY measured_at, id LIMIT $5
        """,
        patient_id,
        kind,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [VitalRecord(**dict(row)) for row in rows]
