"""SQL for signaling: who may enter a room, invitations, and the room's record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class RoomAccess:
    consultation_id: UUID
    appointment_id: UUID
    clinic_id: UUID
    doctor_id: UUID
    patient_id: UUID
    appointment_status: str
    consultation_status: str
    join_opens_at: datetime
    join_closes_at: datetime


@dataclass(frozen=True)
class RoomEvent:
    kind: str
    user_id: UUID | None
    role: str | None
    peer_id: str | None
    at: datetime


async def room_access(conn: Conn, room_id: str) -> RoomAccess | None:
    row = await conn.fetchrow(
        """
        SELECT c.id AS consultation_id, a.id AS appointment_id, a.clinic_id, a.doctor_id,
               a.patient_id, a.status::text AS appointment_status,
               c.status AS consultation_status, c.join_opens_at, c.join_closes_at
        FROM consultations c JOIN appointments a ON a.id = c.appointment_id
        WHERE c.room_id = $1
        """,
        room_id,
    )
    return RoomAccess(**dict(row)) if row else None


async def is_invited(conn: Conn, consultation_id: UUID, user_id: UUID) -> bool:
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM consultation_invites "
        "WHERE consultation_id = $1 AND user_id = $2 AND revoked_at IS NULL)",
        consultation_id,
        user_id,
    )
    return bool(found)


async def invite(conn: Conn, consultation_id: UUID, user_id: UUID, invited_by: UUID) -> None:
    await conn.execute(
        """
        INSERT INTO consultation_invites (consultation_id, user_id, invited_by)
        VALUES ($1, $2, $3)
        ON CONFLICT (consultation_id, user_id)
        DO UPDATE SET revoked_at = NULL, invited_by = EXCLUDED.invited_by
        """,
        consultation_id,
        user_id,
        invited_by,
    )


async def record(
    conn: Conn,
    consultation_id: UUID,
    kind: str,
    *,
    user_id: UUID | None = None,
    role: str | None = None,
    peer_id: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO consultation_events (consultation_id, kind, user_id, role, peer_id) "
        "VALUES ($1, $2, $3, $4, $5)",
        consultation_id,
        kind,
        user_id,
        role,
        peer_id,
    )


async def events(conn: Conn, consultation_id: UUID) -> list[RoomEvent]:
    rows = await conn.fetch(
        "SELECT kind, user_id, role, peer_id, at FROM consultation_events "
        "WHERE consultation_id = $1 ORDER BY id",
        consultation_id,
    )
    return [RoomEvent(**dict(r)) for r in rows]


async def mark_open(conn: Conn, consultation_id: UUID) -> bool:
    """scheduled → open, stamping started_at; False when it was not scheduled."""
    status = await conn.execute(
        "UPDATE consultations SET status = 'open', started_at = coalesce(started_at, now()) "
        "WHERE id = $1 AND status = 'scheduled'",
        consultation_id,
    )
    return bool(status == "UPDATE 1")
