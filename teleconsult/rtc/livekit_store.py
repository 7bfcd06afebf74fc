"""SQL of the LiveKit intake (migration 0015): seen webhook ids and room states.

The pool decodes jsonb into Python values (core/db.py), so states go in and out as dicts.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from teleconsult.rtc.livekit_state import RoomState, from_json, needs_attention, to_json

# How long a webhook id is remembered (far longer than a webhook may be old).
DEDUPE_HOURS = 24


async def remember_event(
    conn: asyncpg.Connection, event_id: str, event: str, room: str | None, created_at: datetime
) -> bool:
    """Notes a webhook id; False when it was seen within the last 24 hours."""
    inserted = await conn.fetchval(
        "INSERT INTO livekit_webhook_events (event_id, event, room, created_at) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING RETURNING true",
        event_id,
        event,
        room,
        created_at,
    )
    return bool(inserted)


async def forget_old_events(conn: asyncpg.Connection) -> int:
    result = await conn.execute(
        "DELETE FROM livekit_webhook_events "
        f"WHERE received_at < now() - interval '{DEDUPE_HOURS} hours'"
    )
    return int(result.split()[-1])


async def load_room(
    conn: asyncpg.Connection, room: str, *, for_update: bool = False
) -> RoomState | None:
    """A room's state (locked for the transaction with ``for_update``), None if unknown."""
    lock = " FOR UPDATE" if for_update else ""
    raw = await conn.fetchval(f"SELECT state FROM livekit_rooms WHERE room = $1{lock}", room)
    return None if raw is None else from_json(raw)


async def lock_room(conn: asyncpg.Connection, room: str, consultation_id: UUID) -> RoomState:
    """The room's state, locked for this transaction; an empty one is created first."""
    await conn.execute(
        "INSERT INTO livekit_rooms (room, consultation_id, state) VALUES ($1, $2, '{}') "
        "ON CONFLICT (room) DO NOTHING",
        room,
        consultation_id,
    )
    state = await load_room(conn, room, for_update=True)
    assert state is not None
    return state


async def save_room(conn: asyncpg.Connection, room: str, state: RoomState) -> None:
    await conn.execute(
        "UPDATE livekit_rooms SET state = $2::jsonb, open_egress = $3, occupied = $4, "
        "updated_at = now() WHERE room = $1",
        room,
        to_json(state),
        needs_attention(state),
        bool(state.present()),
    )


async def quiet_occupied_rooms(
    conn: asyncpg.Connection, before: datetime, limit: int = 100
) -> list[str]:
    """Rooms someone is in, by the events, with no news since ``before``."""
    rows = await conn.fetch(
        "SELECT room FROM livekit_rooms WHERE occupied AND updated_at < $1 "
        "ORDER BY updated_at LIMIT $2",
        before,
        limit,
    )
    return [row["room"] for row in rows]


async def rooms_with_open_egress(conn: asyncpg.Connection, limit: int = 100) -> list[str]:
    rows = await conn.fetch(
        "SELECT room FROM livekit_rooms WHERE open_egress ORDER BY updated_at LIMIT $1", limit
    )
    return [row["room"] for row in rows]


async def clinic_of(conn: asyncpg.Connection, consultation_id: UUID) -> UUID | None:
    """The clinic of a consultation (named by its own id or its appointment's)."""
    clinic: UUID | None = await conn.fetchval(
        "SELECT a.clinic_id FROM appointments AS a "
        "LEFT JOIN consultations AS c ON c.appointment_id = a.id "
        "WHERE a.id = $1 OR c.id = $1 LIMIT 1",
        consultation_id,
    )
    return clinic
