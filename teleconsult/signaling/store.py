"""SQL for signaling: who may enter a room, invitations, and the room's record.

A join reads the room's access and the caller's invitation in one statement and
writes its events (and the consultation's opening) in one more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, TypeAlias
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
    # The asking user holds an invitation to the consultation (not revoked).
    invited: bool


@dataclass(frozen=True)
class RoomEvent:
    kind: str
    user_id: UUID | None
    role: str | None
    peer_id: str | None
    at: datetime


class NewEvent(NamedTuple):
    kind: str
    user_id: UUID | None = None
    role: str | None = None
    peer_id: str | None = None


async def room_access(conn: Conn, room_id: str, user_id: UUID) -> RoomAccess | None:
    row = await conn.fetchrow(
        """
        SELECT c.id AS consultation_id, a.id AS appointment_id, a.clinic_id, a.doctor_id,
               a.patient_id, a.status::text AS appointment_status,
               c.status AS consultation_status, c.join_opens_at, c.join_closes_at,
               $2 NOT IN (a.doctor_id, a.patient_id) AND EXISTS (
                   SELECT 1 FROM consultation_invites i
                   WHERE i.consultation_id = c.id AND i.user_id = $2 AND i.revoked_at IS NULL
               ) AS invited
        FROM consultations c JOIN appointments a ON a.id = c.appointment_id
        WHERE c.room_id = $1
        """,
        room_id,
        user_id,
    )
    return RoomAccess(**dict(row)) if row else None


async def record(
    conn: Conn, room_id: str, events: Sequence[NewEvent], *, open_if: bool = False
) -> None:
    """Append ``events`` in order; with ``open_if``, also open a scheduled consultation
    (``started_at``) and record ``started`` after them. One statement."""
    if not events and not open_if:
        return
    await conn.execute(
        """
        WITH c AS (SELECT id FROM consultations WHERE room_id = $1),
        opened AS (
            UPDATE consultations SET status = 'open', started_at = coalesce(started_at, now())
            WHERE $6 AND id = (SELECT id FROM c) AND status = 'scheduled'
            RETURNING id
        )
        INSERT INTO consultation_events (consultation_id, kind, user_id, role, peer_id)
        SELECT consultation_id, kind, user_id, role, peer_id FROM (
            SELECT c.id AS consultation_id, e.kind, e.user_id, e.role, e.peer_id, e.n
            FROM c, unnest($2::text[], $3::uuid[], $4::text[], $5::text[])
                 WITH ORDINALITY AS e(kind, user_id, role, peer_id, n)
            UNION ALL
            SELECT opened.id, 'started', NULL, NULL, NULL, 9223372036854775807 FROM opened
        ) AS rows
        ORDER BY n
        """,
        room_id,
        [e.kind for e in events],
        [e.user_id for e in events],
        [e.role for e in events],
        [e.peer_id for e in events],
        open_if,
    )


async def invite(conn: Conn, room_id: str, user_id: UUID, role: str, invited_by: UUID) -> None:
    """Invite a user (again) and record it, in one statement."""
    await conn.execute(
        """
        WITH c AS (SELECT id FROM consultations WHERE room_id = $1),
        invited AS (
            INSERT INTO consultation_invites (consultation_id, user_id, invited_by)
            SELECT id, $2, $4 FROM c
            ON CONFLICT (consultation_id, user_id)
            DO UPDATE SET revoked_at = NULL, invited_by = EXCLUDED.invited_by
            RETURNING consultation_id
        )
        INSERT INTO consultation_events (consultation_id, kind, user_id, role)
        SELECT consultation_id, 'invited', $2, $3 FROM invited
        """,
        room_id,
        user_id,
        role,
        invited_by,
    )


async def events(conn: Conn, room_id: str) -> list[RoomEvent]:
    rows = await conn.fetch(
        "SELECT e.kind, e.user_id, e.role, e.peer_id, e.at FROM consultation_events e "
        "JOIN consultations c ON c.id = e.consultation_id WHERE c.room_id = $1 ORDER BY e.id",
        room_id,
    )
    return [RoomEvent(**dict(r)) for r in rows]
