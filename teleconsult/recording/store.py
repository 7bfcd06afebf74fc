"""SQL for recordings and recording consents (migration 0014)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"
RecordingState = Literal["pending", "recording", "sealing", "ready", "failed", "expired"]
ACTIVE_STATES: tuple[RecordingState, ...] = ("pending", "recording", "sealing")


@dataclass(frozen=True)
class Recording:
    id: UUID
    clinic_id: UUID
    appointment_id: UUID
    backend_recording_id: str
    state: RecordingState
    started_by: UUID | None
    object_name: str | None
    content_type: str | None
    size: int | None
    sealed_size: int | None
    key_version: int | None
    wrapped_key: bytes | None
    failure: str | None
    created_at: datetime
    finished_at: datetime | None
    expires_at: datetime | None
    key_destroyed_at: datetime | None


@dataclass(frozen=True)
class Consent:
    appointment_id: UUID
    clinic_id: UUID
    patient_id: UUID
    given_at: datetime
    withdrawn_at: datetime | None

    @property
    def active(self) -> bool:
        return self.withdrawn_at is None


_COLUMNS = (
    "id, clinic_id, appointment_id, backend_recording_id, state, started_by, object_name, "
    "content_type, size, sealed_size, key_version, wrapped_key, failure, created_at, "
    "finished_at, expires_at, key_destroyed_at"
)
_CONSENT = "appointment_id, clinic_id, patient_id, given_at, withdrawn_at"


def _recording(row: Any) -> Recording:
    return Recording(**dict(row))


async def give_consent(
    conn: Conn, *, appointment_id: UUID, clinic_id: UUID, patient_id: UUID
) -> Consent:
    """Record (or renew, after a withdrawal) the patient's consent."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO recording_consents (appointment_id, clinic_id, patient_id)
        VALUES ($1, $2, $3)
        ON CONFLICT (appointment_id) DO UPDATE
            SET given_at = CASE WHEN recording_consents.withdrawn_at IS NULL
                                THEN recording_consents.given_at ELSE now() END,
                withdrawn_at = NULL
        RETURNING {_CONSENT}
        """,
        appointment_id,
        clinic_id,
        patient_id,
    )
    assert row is not None
    return Consent(**dict(row))


async def withdraw_consent(conn: Conn, appointment_id: UUID) -> Consent | None:
    row = await conn.fetchrow(
        f"""
        UPDATE recording_consents SET withdrawn_at = COALESCE(withdrawn_at, now())
        WHERE appointment_id = $1 RETURNING {_CONSENT}
        """,
        appointment_id,
    )
    return Consent(**dict(row)) if row else None


async def get_consent(
    conn: Conn, appointment_id: UUID, *, for_share: bool = False
) -> Consent | None:
    lock = " FOR SHARE" if for_share else ""
    row = await conn.fetchrow(
        f"SELECT {_CONSENT} FROM recording_consents WHERE appointment_id = $1{lock}",
        appointment_id,
    )
    return Consent(**dict(row)) if row else None


async def insert_recording(
    conn: Conn,
    *,
    recording_id: UUID,
    clinic_id: UUID,
    appointment_id: UUID,
    backend_recording_id: str,
    started_by: UUID | None,
) -> tuple[Recording, bool]:
    """The new row, or the one already there for this backend recording (and False)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO recordings (id, clinic_id, appointment_id, backend_recording_id, started_by)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (appointment_id, backend_recording_id) DO NOTHING
        RETURNING {_COLUMNS}
        """,
        recording_id,
        clinic_id,
        appointment_id,
        backend_recording_id,
        started_by,
    )
    if row is not None:
        return _recording(row), True
    existing = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM recordings "
        "WHERE appointment_id = $1 AND backend_recording_id = $2",
        appointment_id,
        backend_recording_id,
    )
    assert existing is not None
    return _recording(existing), False


async def get_recording(conn: Conn, recording_id: UUID, *, lock: str = "") -> Recording | None:
    suffix = {"": "", "share": " FOR SHARE", "update": " FOR UPDATE"}[lock]
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM recordings WHERE id = $1{suffix}", recording_id
    )
    return _recording(row) if row else None


async def by_backend_id(
    conn: Conn, appointment_id: UUID, backend_recording_id: str
) -> Recording | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM recordings "
        "WHERE appointment_id = $1 AND backend_recording_id = $2",
        appointment_id,
        backend_recording_id,
    )
    return _recording(row) if row else None


async def list_for_appointment(conn: Conn, appointment_id: UUID) -> list[Recording]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM recordings WHERE appointment_id = $1 ORDER BY created_at, id",
        appointment_id,
    )
    return [_recording(row) for row in rows]


async def claim_for_sealing(
    conn: Conn, recording_id: UUID, attempt: UUID, lease_seconds: float
) -> Recording | None:
    """Move a recording to 'sealing' for this attempt (also one whose earlier attempt's
    lease ran out); None when it is not in a state to be sealed now."""
    row = await conn.fetchrow(
        f"""
        UPDATE recordings
        SET state = 'sealing', attempt = $2, lease_until = now() + make_interval(secs => $3)
        WHERE id = $1 AND (state IN ('pending', 'recording')
                           OR (state = 'sealing' AND lease_until < now()))
        RETURNING {_COLUMNS}
        """,
        recording_id,
        attempt,
        lease_seconds,
    )
    return _recording(row) if row else None


async def release_claim(conn: Conn, recording_id: UUID, attempt: UUID) -> None:
    """Give a failed sealing attempt's lease back, so the next attempt need not wait."""
    await conn.execute(
        """
        UPDATE recordings SET state = 'recording', attempt = NULL, lease_until = NULL
        WHERE id = $1 AND attempt = $2 AND state = 'sealing'
        """,
        recording_id,
        attempt,
    )


async def mark_ready(
    conn: Conn,
    *,
    recording_id: UUID,
    attempt: UUID,
    object_name: str,
    content_type: str,
    size: int,
    sealed_size: int,
    key_version: int,
    wrapped_key: bytes,
) -> Recording | None:
    """Sealed: store where and under which key; the expiry follows the clinic's
    retention. None when this attempt no longer holds the row."""
    row = await conn.fetchrow(
        f"""
        UPDATE recordings AS r
        SET state = 'ready', attempt = NULL, lease_until = NULL, object_name = $3,
            content_type = $4, size = $5, sealed_size = $6, key_version = $7,
            wrapped_key = $8, finished_at = now(),
            expires_at = now() + make_interval(days => c.recording_retention_days)
        FROM clinics AS c
        WHERE r.id = $1 AND r.attempt = $2 AND r.state = 'sealing' AND c.id = r.clinic_id
        RETURNING {", ".join("r." + c.strip() for c in _COLUMNS.split(","))}
        """,
        recording_id,
        attempt,
        object_name,
        content_type,
        size,
        sealed_size,
        key_version,
        wrapped_key,
    )
    return _recording(row) if row else None


async def mark_failed(conn: Conn, recording_id: UUID, reason: str) -> Recording | None:
    """Final failure, unless it is already ready, expired or failed (None then)."""
    row = await conn.fetchrow(
        f"""
        UPDATE recordings
        SET state = 'failed', failure = left($2, 200), attempt = NULL, lease_until = NULL,
            finished_at = now()
        WHERE id = $1 AND state IN ('pending', 'recording', 'sealing')
        RETURNING {_COLUMNS}
        """,
        recording_id,
        reason,
    )
    return _recording(row) if row else None


async def lock_due(conn: Conn, *, limit: int) -> list[Recording]:
    """Ready recordings past their expiry, locked (skipping those another sweeper holds)."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM recordings
        WHERE state = 'ready' AND expires_at <= now()
        ORDER BY expires_at LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return [_recording(row) for row in rows]


async def mark_expired(conn: Conn, recording_id: UUID) -> None:
    await conn.execute(
        """
        UPDATE recordings SET state = 'expired', wrapped_key = NULL, key_destroyed_at = now()
        WHERE id = $1 AND state = 'ready'
        """,
        recording_id,
    )


async def lock_to_rewrap(conn: Conn, current_version: int, *, limit: int) -> list[Recording]:
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM recordings
        WHERE state = 'ready' AND key_version <> $1
        ORDER BY id LIMIT $2
        FOR UPDATE SKIP LOCKED
        """,
        current_version,
        limit,
    )
    return [_recording(row) for row in rows]


async def count_by_key_version(conn: Conn) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT key_version, count(*) AS n FROM recordings WHERE state = 'ready' GROUP BY 1"
    )
    return {row["key_version"]: row["n"] for row in rows}


async def set_key(conn: Conn, recording_id: UUID, key_version: int, wrapped_key: bytes) -> None:
    await conn.execute(
        "UPDATE recordings SET key_version = $2, wrapped_key = $3 "
        "WHERE id = $1 AND state = 'ready'",
        recording_id,
        key_version,
        wrapped_key,
    )


async def set_retention(conn: Conn, clinic_id: UUID, days: int) -> int | None:
    """The clinic's new retention (days), None when there is no such clinic. Applies to
    recordings sealed from now on; those already sealed keep their expiry."""
    found: int | None = await conn.fetchval(
        "UPDATE clinics SET recording_retention_days = $2 WHERE id = $1 "
        "RETURNING recording_retention_days",
        clinic_id,
        days,
    )
    return found


async def get_retention(conn: Conn, clinic_id: UUID) -> int | None:
    found: int | None = await conn.fetchval(
        "SELECT recording_retention_days FROM clinics WHERE id = $1", clinic_id
    )
    return found
