"""SQL of doctors' calendar feeds (tokens stored only as SHA-256)."""

from __future__ import annotations

from typing import TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.scheduling.records import CalendarFeed
from teleconsult.scheduling.store import rows_affected

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


_FEED_COLUMNS = "id, doctor_id, created_at, revoked_at"


async def create_calendar_feed(conn: Conn, *, doctor_id: UUID, token_hash: bytes) -> CalendarFeed:
    """Store a feed; the caller keeps the token and passes its SHA-256 here."""
    row = await conn.fetchrow(
        f"INSERT INTO calendar_feeds (doctor_id, token_hash) VALUES ($1, $2) "
        f"RETURNING {_FEED_COLUMNS}",
        doctor_id,
        token_hash,
    )
    assert row is not None
    return CalendarFeed(**dict(row))


async def find_calendar_feed(conn: Conn, token_hash: bytes) -> CalendarFeed | None:
    """The unrevoked feed with this token hash."""
    row = await conn.fetchrow(
        f"SELECT {_FEED_COLUMNS} FROM calendar_feeds WHERE token_hash = $1 AND revoked_at IS NULL",
        token_hash,
    )
    return CalendarFeed(**dict(row)) if row else None


async def list_calendar_feeds(conn: Conn, doctor_id: UUID) -> list[CalendarFeed]:
    rows = await conn.fetch(
        f"SELECT {_FEED_COLUMNS} FROM calendar_feeds WHERE doctor_id = $1 ORDER BY created_at, id",
        doctor_id,
    )
    return [CalendarFeed(**dict(row)) for row in rows]


async def revoke_calendar_feed(conn: Conn, *, doctor_id: UUID, feed_id: UUID) -> bool:
    """Revoke one of the doctor's feeds; False when it is not theirs or already revoked."""
    status = await conn.execute(
        "UPDATE calendar_feeds SET revoked_at = now() "
        "WHERE id = $1 AND doctor_id = $2 AND revoked_at IS NULL",
        feed_id,
        doctor_id,
    )
    return rows_affected(status) == 1
