"""SQL of care plans (migration 0017)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class CarePlanRow:
    id: UUID
    patient_id: UUID
    author_id: UUID
    plan_ct: bytes
    starts_on: date
    expires_at: datetime
    ended_at: datetime | None
    created_at: datetime


COLUMNS = "id, patient_id, author_id, plan_ct, starts_on, expires_at, ended_at, created_at"


async def insert(
    conn: Conn,
    *,
    plan_id: UUID,
    clinic_id: UUID,
    patient_id: UUID,
    author_id: UUID,
    plan_ct: bytes,
    starts_on: date,
    expires_at: datetime,
) -> CarePlanRow:
    row = await conn.fetchrow(
        f"INSERT INTO care_plans (id, clinic_id, patient_id, author_id, plan_ct, starts_on, "
        f"expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}",
        plan_id,
        clinic_id,
        patient_id,
        author_id,
        plan_ct,
        starts_on,
        expires_at,
    )
    assert row is not None
    return CarePlanRow(**dict(row))


async def for_patient(conn: Conn, patient_id: UUID) -> list[CarePlanRow]:
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM care_plans WHERE patient_id = $1 ORDER BY created_at, id LIMIT 500",
        patient_id,
    )
    return [CarePlanRow(**dict(row)) for row in rows]


async def get(conn: Conn, patient_id: UUID, plan_id: UUID) -> CarePlanRow | None:
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM care_plans WHERE id = $2 AND patient_id = $1",
        patient_id,
        plan_id,
    )
    return None if row is None else CarePlanRow(**dict(row))


async def end(conn: Conn, patient_id: UUID, plan_id: UUID) -> CarePlanRow | None:
    row = await conn.fetchrow(
        f"UPDATE care_plans SET ended_at = coalesce(ended_at, now()) "
        f"WHERE id = $2 AND patient_id = $1 RETURNING {COLUMNS}",
        patient_id,
        plan_id,
    )
    return None if row is None else CarePlanRow(**dict(row))
