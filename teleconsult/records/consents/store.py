"""SQL of consents and care team memberships (migration 0016)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class ConsentRecord:
    id: UUID
    patient_id: UUID
    grantee_user_id: UUID | None
    grantee_clinic_id: UUID | None
    scope: str
    granted_by: UUID
    granted_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: UUID | None


@dataclass(frozen=True)
class CareTeamRecord:
    id: UUID
    patient_id: UUID
    member_id: UUID
    starts_at: datetime
    ends_at: datetime
    added_by: UUID
    ended_at: datetime | None


_CONSENT = (
    "id, patient_id, grantee_user_id, grantee_clinic_id, scope, granted_by, granted_at, "
    "expires_at, revoked_at, revoked_by"
)
_CARE = "id, patient_id, member_id, starts_at, ends_at, added_by, ended_at"


async def insert_consent(
    conn: Conn,
    *,
    clinic_id: UUID,
    patient_id: UUID,
    grantee_user_id: UUID | None,
    grantee_clinic_id: UUID | None,
    scope: str,
    granted_by: UUID,
    expires_at: datetime,
) -> ConsentRecord:
    row = await conn.fetchrow(
        f"INSERT INTO consents (clinic_id, patient_id, grantee_user_id, grantee_clinic_id, "
        f"scope, granted_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
        f"RETURNING {_CONSENT}",
        clinic_id,
        patient_id,
        grantee_user_id,
        grantee_clinic_id,
        scope,
        granted_by,
        expires_at,
    )
    assert row is not None
    return ConsentRecord(**dict(row))


async def list_consents(conn: Conn, patient_id: UUID) -> list[ConsentRecord]:
    rows = await conn.fetch(
        f"SELECT {_CONSENT} FROM consents WHERE patient_id = $1 ORDER BY granted_at, id LIMIT 500",
        patient_id,
    )
    return [ConsentRecord(**dict(row)) for row in rows]


async def revoke_consent(
    conn: Conn, *, patient_id: UUID, consent_id: UUID, by: UUID
) -> ConsentRecord | None:
    """Revoke (once; a revoked consent is returned as it is). None: no such consent."""
    row = await conn.fetchrow(
        f"""
        WITH r AS (
            UPDATE consents SET revoked_at = now(), revoked_by = $3
            WHERE id = $2 AND patient_id = $1 AND revoked_at IS NULL
            RETURNING {_CONSENT}
        )
        SELECT {_CONSENT} FROM r
        UNION ALL
        SELECT {_CONSENT} FROM consents WHERE id = $2 AND patient_id = $1
            AND NOT EXISTS (SELECT 1 FROM r)
        """,
        patient_id,
        consent_id,
        by,
    )
    return None if row is None else ConsentRecord(**dict(row))


async def clinician_of(conn: Conn, user_id: UUID, clinic_id: UUID) -> bool:
    """Whether the user is an active doctor or nurse of the clinic."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND clinic_id = $2 "
        "AND role IN ('doctor', 'nurse') AND status = 'active')",
        user_id,
        clinic_id,
    )
    return found


async def clinic_exists(conn: Conn, clinic_id: UUID) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM clinics WHERE id = $1)", clinic_id
    )
    return found


async def patient_clinic(conn: Conn, patient_id: UUID) -> UUID | None:
    clinic: UUID | None = await conn.fetchval(
        "SELECT clinic_id FROM users WHERE id = $1 AND role = 'patient'", patient_id
    )
    return clinic


async def insert_care_team(
    conn: Conn,
    *,
    clinic_id: UUID,
    patient_id: UUID,
    member_id: UUID,
    ends_at: datetime,
    added_by: UUID,
) -> CareTeamRecord:
    row = await conn.fetchrow(
        f"INSERT INTO care_team_members (clinic_id, patient_id, member_id, ends_at, added_by) "
        f"VALUES ($1, $2, $3, $4, $5) RETURNING {_CARE}",
        clinic_id,
        patient_id,
        member_id,
        ends_at,
        added_by,
    )
    assert row is not None
    return CareTeamRecord(**dict(row))


async def list_care_team(conn: Conn, patient_id: UUID) -> list[CareTeamRecord]:
    rows = await conn.fetch(
        f"SELECT {_CARE} FROM care_team_members WHERE patient_id = $1 "
        "ORDER BY starts_at, id LIMIT 500",
        patient_id,
    )
    return [CareTeamRecord(**dict(row)) for row in rows]


async def end_care_team(
    conn: Conn, *, patient_id: UUID, membership_id: UUID
) -> CareTeamRecord | None:
    row = await conn.fetchrow(
        f"UPDATE care_team_members SET ended_at = coalesce(ended_at, now()) "
        f"WHERE id = $2 AND patient_id = $1 RETURNING {_CARE}",
        patient_id,
        membership_id,
    )
    return None if row is None else CareTeamRecord(**dict(row))
