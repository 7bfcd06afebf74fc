"""SQL of clinical note versions (migration 0016): append-only, ciphertexts only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class VersionRow:
    id: UUID
    note_id: UUID
    version: int
    patient_id: UUID
    consultation_id: UUID | None
    author_id: UUID
    body_ct: bytes
    supersedes: UUID | None
    created_at: datetime
    # When the note (its version 1) was written.
    note_created_at: datetime


COLUMNS = (
    "v.id, v.note_id, v.version, v.patient_id, v.consultation_id, v.author_id, v.body_ct, "
    "v.supersedes, v.created_at"
)
# Versions (``v``) with when their note was written (its version 1, ``f``).
SELECT_VERSIONS = f"""
    SELECT {COLUMNS}, f.created_at AS note_created_at
    FROM clinical_note_versions v
    JOIN clinical_note_versions f ON f.note_id = v.note_id AND f.version = 1
"""


async def insert_first(
    conn: Conn,
    *,
    version_id: UUID,
    clinic_id: UUID,
    patient_id: UUID,
    consultation_id: UUID | None,
    author_id: UUID,
    body_ct: bytes,
) -> VersionRow:
    row = await conn.fetchrow(
        f"""
        INSERT INTO clinical_note_versions AS v (id, note_id, version, clinic_id, patient_id,
            consultation_id, author_id, body_ct)
        VALUES ($1, $1, 1, $2, $3, $4, $5, $6)
        RETURNING {COLUMNS}, v.created_at AS note_created_at
        """,
        version_id,
        clinic_id,
        patient_id,
        consultation_id,
        author_id,
        body_ct,
    )
    assert row is not None
    return VersionRow(**dict(row))


async def latest(conn: Conn, patient_id: UUID, note_id: UUID) -> VersionRow | None:
    row = await conn.fetchrow(
        f"""
        {SELECT_VERSIONS}
        WHERE v.note_id = $2 AND v.patient_id = $1
        ORDER BY v.version DESC LIMIT 1
        """,
        patient_id,
        note_id,
    )
    return None if row is None else VersionRow(**dict(row))


async def insert_amendment(
    conn: Conn,
    *,
    version_id: UUID,
    previous: VersionRow,
    clinic_id: UUID,
    author_id: UUID,
    body_ct: bytes,
) -> VersionRow | None:
    """The next version after ``previous``; None when another amendment came first (the
    unique (note_id, version) stops it)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO clinical_note_versions AS v (id, note_id, version, clinic_id, patient_id,
            consultation_id, author_id, body_ct, supersedes)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT (note_id, version) DO NOTHING
        RETURNING {COLUMNS}, $10::timestamptz AS note_created_at
        """,
        version_id,
        previous.note_id,
        previous.version + 1,
        clinic_id,
        previous.patient_id,
        previous.consultation_id,
        author_id,
        body_ct,
        previous.id,
        previous.note_created_at,
    )
    return None if row is None else VersionRow(**dict(row))


async def latest_page(
    conn: Conn, *, patient_id: UUID, after: tuple[datetime, UUID] | None, limit: int
) -> list[VersionRow]:
    """The newest version of each note, notes in the order they were written."""
    rows = await conn.fetch(
        f"""
        SELECT {COLUMNS}, f.created_at AS note_created_at
        FROM clinical_note_versions f
        JOIN LATERAL (
            SELECT * FROM clinical_note_versions x WHERE x.note_id = f.note_id
            ORDER BY x.version DESC LIMIT 1
        ) v ON true
        WHERE f.patient_id = $1 AND f.version = 1
            AND ($2::timestamptz IS NULL OR (f.created_at, f.note_id) > ($2, $3))
        ORDER BY f.created_at, f.note_id LIMIT $4
        """,
        patient_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [VersionRow(**dict(row)) for row in rows]


async def history(conn: Conn, patient_id: UUID, note_id: UUID) -> list[VersionRow]:
    rows = await conn.fetch(
        f"""
        {SELECT_VERSIONS}
        WHERE v.note_id = $2 AND v.patient_id = $1
        ORDER BY v.version
        """,
        patient_id,
        note_id,
    )
    return [VersionRow(**dict(row)) for row in rows]


async def consultation_of_patient(conn: Conn, consultation_id: UUID, patient_id: UUID) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM consultations c JOIN appointments a "
        "ON a.id = c.appointment_id WHERE c.id = $1 AND a.patient_id = $2)",
        consultation_id,
        patient_id,
    )
    return found
