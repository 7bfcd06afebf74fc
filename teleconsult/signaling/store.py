"""SQL for signaling: who may enter a room, invitations, and the room's record.

A join reads the room's access and the caller's invitation in one statement and
writes its events (and the consultation's opening) in one more; concurrent joins
share those statements (``*_many``: one statement for many rooms, batched by the
service).
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
    # The clinic's payment gate ('pay_before', 'pay_after' or 'none'; migration 0021).
    payment_gate: str
    # The asking user's name, as the others in the call see it ('' if unknown).
    name: str


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


_ACCESS = """
SELECT $3::int AS ord, c.id AS consultation_id, a.id AS appointment_id, a.clinic_id, a.doctor_id,
       a.patient_id, a.status::text AS appointment_status,
       c.status AS consultation_status, c.join_opens_at, c.join_closes_at,
       $2 NOT IN (a.doctor_id, a.patient_id) AND EXISTS (
           SELECT 1 FROM consultation_invites i
           WHERE i.consultation_id = c.id AND i.user_id = $2 AND i.revoked_at IS NULL
       ) AS invited,
       clinic_payment_gate(a.clinic_id) AS payment_gate,
       coalesce((SELECT u.full_name FROM users u WHERE u.id = $2), '') AS name
FROM consultations c JOIN appointments a ON a.id = c.appointment_id
WHERE c.room_id = $1
"""


def _access(row: asyncpg.Record) -> RoomAccess:
    values = dict(row)
    del values["ord"]
    return RoomAccess(**values)


async def room_access(conn: Conn, room_id: str, user_id: UUID) -> RoomAccess | None:
    row = await conn.fetchrow(_ACCESS, room_id, user_id, 0)
    return _access(row) if row else None


_ACCESS_MANY = """
SELECT q.ord, c.id AS consultation_id, a.id AS appointment_id, a.clinic_id, a.doctor_id,
       a.patient_id, a.status::text AS appointment_status,
       c.status AS consultation_status, c.join_opens_at, c.join_closes_at,
       q.user_id NOT IN (a.doctor_id, a.patient_id) AND EXISTS (
           SELECT 1 FROM consultation_invites i
           WHERE i.consultation_id = c.id AND i.user_id = q.user_id AND i.revoked_at IS NULL
       ) AS invited,
       clinic_payment_gate(a.clinic_id) AS payment_gate,
       coalesce((SELECT u.full_name FROM users u WHERE u.id = q.user_id), '') AS name
FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS q(room_id, user_id, ord)
JOIN consultations c ON c.room_id = q.room_id
JOIN appointments a ON a.id = c.appointment_id
"""


async def room_access_many(conn: Conn, asks: Sequence[tuple[str, UUID]]) -> list[RoomAccess | None]:
    """``room_access`` for many (room id, user id) at once: one statement."""
    rows = await conn.fetch(_ACCESS_MANY, [room for room, _ in asks], [user for _, user in asks])
    found = {row["ord"]: _access(row) for row in rows}
    return [found.get(i) for i in range(1, len(asks) + 1)]


async def record(
    conn: Conn, room_id: str, events: Sequence[NewEvent], *, open_if: bool = False
) -> None:
    """Append ``events`` in order; with ``open_if``, also open a scheduled consultation
    (``started_at``) and record ``started`` after them. One statement."""
    if events or open_if:
        await record_many(conn, [(room_id, events, open_if)])


# Many rooms' events in one statement: item i is (room, open_if); each event names
# its item. A 'started' event follows a room's own events (ids order them).
_RECORD_MANY = """
WITH items AS (
    SELECT * FROM unnest($1::text[], $2::bool[]) WITH ORDINALITY AS it(room_id, open_if, item)
), c AS (
    SELECT it.item, it.open_if, co.id FROM items it JOIN consultations co ON co.room_id = it.room_id
), opened AS (
    UPDATE consultations SET status = 'open', started_at = coalesce(started_at, now())
    WHERE id IN (SELECT id FROM c WHERE open_if) AND status = 'scheduled'
    RETURNING id
), ev AS (
    SELECT * FROM unnest($3::bigint[], $4::text[], $5::uuid[], $6::text[], $7::text[])
        WITH ORDINALITY AS e(item, kind, user_id, role, peer_id, n)
)
INSERT INTO consultation_events (consultation_id, kind, user_id, role, peer_id)
SELECT consultation_id, kind, user_id, role, peer_id FROM (
    SELECT c.id AS consultation_id, ev.kind, ev.user_id, ev.role, ev.peer_id, ev.n
    FROM ev JOIN c ON c.item = ev.item
    UNION ALL
    SELECT opened.id, 'started', NULL, NULL, NULL, 9223372036854775807 FROM opened
) AS rows
ORDER BY n
"""


async def record_many(conn: Conn, items: Sequence[tuple[str, Sequence[NewEvent], bool]]) -> None:
    """``record`` for many rooms at once: one statement, all or nothing."""
    if not items:
        return
    flat = [(i, e) for i, (_, events, _) in enumerate(items, start=1) for e in events]
    await conn.execute(
        _RECORD_MANY,
        [room for room, _, _ in items],
        [open_if for _, _, open_if in items],
        [i for i, _ in flat],
        [e.kind for _, e in flat],
        [e.user_id for _, e in flat],
        [e.role for _, e in flat],
        [e.peer_id for _, e in flat],
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
