"""SQL for patient notes (patients themselves are rows of ``users``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class NoteRecord:
    id: UUID
    clinic_id: UUID
    patient_id: UUID
    author_id: UUID
    body: str
    created_at: datetime


_COLUMNS = "id, clinic_id, patient_id, author_id, body, created_at"


async def insert_note(
    conn: Conn, *, clinic_id: UUID, patient_id: UUID, author_id: UUID, body: str
) -> NoteRecord:
    row = await conn.fetchrow(
        f"INSERT INTO patient_notes (clinic_id, patient_id, author_id, body) "
        f"VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}",
        clinic_id,
        patient_id,
        author_id,
        body,
    )
    assert row is not None
    return NoteRecord(**dict(row))


async def list_notes(
    conn: Conn, *, patient_id: UUID, after: tuple[datetime, UUID] | None, limit: int
) -> list[NoteRecord]:
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM patient_notes
        WHERE patient_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
        ORDER BY created_at, id
        LIMIT $4
        """,
        patient_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return [NoteRecord(**dict(row)) for row in rows]
