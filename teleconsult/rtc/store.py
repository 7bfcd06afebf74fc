"""SQL for network tests (migration 0008)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.rtc.records import NetworkTest, TestStatus

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

_COLUMNS = (
    "id, clinic_id, appointment_id, consultation_id, user_id, user_role, started_at, "
    "expires_at, finished_at, status, server, client, reported_at"
)


def _test(row: Any) -> NetworkTest:
    return NetworkTest(**dict(row))


async def insert_test(
    conn: Conn,
    *,
    test_id: UUID,
    clinic_id: UUID,
    appointment_id: UUID,
    consultation_id: UUID,
    user_id: UUID,
    user_role: str,
    expires_at: datetime,
) -> NetworkTest:
    row = await conn.fetchrow(
        f"""
        INSERT INTO network_tests (id, clinic_id, appointment_id, consultation_id, user_id,
                                   user_role, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING {_COLUMNS}
        """,
        test_id,
        clinic_id,
        appointment_id,
        consultation_id,
        user_id,
        user_role,
        expires_at,
    )
    assert row is not None
    return _test(row)


async def get_test(conn: Conn, test_id: UUID) -> NetworkTest | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM network_tests WHERE id = $1", test_id)
    return _test(row) if row else None


async def finish_test(
    conn: Conn, test_id: UUID, status: TestStatus, server: dict[str, Any]
) -> bool:
    """Store the server's outcome once; False when the test had already finished."""
    done = await conn.fetchval(
        """
        UPDATE network_tests SET status = $2, server = $3, finished_at = now()
        WHERE id = $1 AND status = 'running'
        RETURNING true
        """,
        test_id,
        status,
        server,
    )
    return bool(done)


async def report_test(conn: Conn, test_id: UUID, client: dict[str, Any]) -> NetworkTest | None:
    """Store the client's figures once; None when they were already reported."""
    row = await conn.fetchrow(
        f"""
        UPDATE network_tests SET client = $2, reported_at = now()
        WHERE id = $1 AND reported_at IS NULL
        RETURNING {_COLUMNS}
        """,
        test_id,
        client,
    )
    return _test(row) if row else None


async def latest_of_users(
    conn: Conn, asks: Sequence[tuple[UUID, UUID]]
) -> list[NetworkTest | None]:
    """The newest test of each (appointment id, user id), in one statement."""
    rows = await conn.fetch(
        f"""
        SELECT DISTINCT ON (q.ord) q.ord, {", ".join("t." + c.strip() for c in _COLUMNS.split(","))}
        FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS q(appointment_id, user_id, ord)
        JOIN network_tests t ON t.appointment_id = q.appointment_id AND t.user_id = q.user_id
        ORDER BY q.ord, t.started_at DESC, t.id
        """,
        [appointment for appointment, _ in asks],
        [user for _, user in asks],
    )
    found = {
        row["ord"]: NetworkTest(**{k: v for k, v in dict(row).items() if k != "ord"})
        for row in rows
    }
    return [found.get(i) for i in range(1, len(asks) + 1)]


async def latest_per_user(
    conn: Conn, appointment_id: UUID, *, user_id: UUID | None = None
) -> list[NetworkTest]:
    """The newest test of each user for the appointment (of one user, if given)."""
    rows = await conn.fetch(
        f"""
        SELECT * FROM (
            SELECT DISTINCT ON (user_id) {_COLUMNS} FROM network_tests
            WHERE appointment_id = $1 AND ($2::uuid IS NULL OR user_id = $2)
            ORDER BY user_id, started_at DESC, id
        ) AS latest
        ORDER BY started_at DESC, id
        """,
        appointment_id,
        user_id,
    )
    return [_test(row) for row in rows]
