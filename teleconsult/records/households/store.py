"""SQL of households and their members (migration 0016)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class HouseholdRecord:
    id: UUID
    clinic_id: UUID
    label: str
    created_at: datetime


@dataclass(frozen=True)
class MemberRecord:
    household_id: UUID
    user_id: UUID
    kind: str
    permissions: list[str]
    added_at: datetime
    removed_at: datetime | None


_MEMBER = "household_id, user_id, kind, permissions, added_at, removed_at"


async def insert_household(conn: Conn, *, clinic_id: UUID, label: str, by: UUID) -> HouseholdRecord:
    row = await conn.fetchrow(
        "INSERT INTO households (clinic_id, label, created_by) VALUES ($1, $2, $3) "
        "RETURNING id, clinic_id, label, created_at",
        clinic_id,
        label,
        by,
    )
    assert row is not None
    return HouseholdRecord(**dict(row))


async def get_household(conn: Conn, household_id: UUID) -> HouseholdRecord | None:
    row = await conn.fetchrow(
        "SELECT id, clinic_id, label, created_at FROM households WHERE id = $1", household_id
    )
    return None if row is None else HouseholdRecord(**dict(row))


async def list_members(conn: Conn, household_id: UUID) -> list[MemberRecord]:
    rows = await conn.fetch(
        f"SELECT {_MEMBER} FROM household_members WHERE household_id = $1 "
        "ORDER BY added_at, user_id",
        household_id,
    )
    return [MemberRecord(**dict(row)) for row in rows]


async def patient_facts(conn: Conn, user_id: UUID) -> tuple[UUID, date | None] | None:
    """The clinic and date of birth of a patient; None if not a patient."""
    row = await conn.fetchrow(
        "SELECT clinic_id, date_of_birth FROM users WHERE id = $1 AND role = 'patient'", user_id
    )
    return None if row is None else (row["clinic_id"], row["date_of_birth"])


async def upsert_member(
    conn: Conn, *, household_id: UUID, user_id: UUID, kind: str, permissions: list[str], by: UUID
) -> MemberRecord:
    row = await conn.fetchrow(
        f"""
        INSERT INTO household_members (household_id, user_id, kind, permissions, added_by)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (household_id, user_id) DO UPDATE SET kind = EXCLUDED.kind,
            permissions = EXCLUDED.permissions, added_by = EXCLUDED.added_by,
            added_at = now(), removed_at = NULL
        RETURNING {_MEMBER}
        """,
        household_id,
        user_id,
        kind,
        permissions,
        by,
    )
    assert row is not None
    return MemberRecord(**dict(row))


async def remove_member(conn: Conn, *, household_id: UUID, user_id: UUID) -> MemberRecord | None:
    row = await conn.fetchrow(
        f"UPDATE household_members SET removed_at = coalesce(removed_at, now()) "
        f"WHERE household_id = $1 AND user_id = $2 RETURNING {_MEMBER}",
        household_id,
        user_id,
    )
    return None if row is None else MemberRecord(**dict(row))
