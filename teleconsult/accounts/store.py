"""SQL for clinics, users and refresh-token sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.accounts.emails import email_key
from teleconsult.accounts.records import ClinicRecord, UserRecord
from teleconsult.core.identity import Role

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

_USER_COLUMNS = (
    "id, clinic_id, email, role::text AS role, full_name, phone, date_of_birth, status, "
    "created_at, updated_at"
)


def _user(row: asyncpg.Record) -> UserRecord:
    values = dict(row)
    values["role"] = Role(values["role"])
    return UserRecord(**values)


def _clinic(row: asyncpg.Record) -> ClinicRecord:
    return ClinicRecord(**dict(row))


async def insert_clinic(conn: Conn, *, name: str, timezone: str) -> ClinicRecord:
    row = await conn.fetchrow(
        "INSERT INTO clinics (name, timezone) VALUES ($1, $2) "
        "RETURNING id, name, timezone, created_at",
        name,
        timezone,
    )
    assert row is not None
    return _clinic(row)


async def get_clinic(conn: Conn, clinic_id: UUID) -> ClinicRecord | None:
    row = await conn.fetchrow(
        "SELECT id, name, timezone, created_at FROM clinics WHERE id = $1", clinic_id
    )
    return _clinic(row) if row else None


async def count_clinics(conn: Conn) -> int:
    value = await conn.fetchval("SELECT count(*) FROM clinics")
    return int(value)


# Serialises first-run set-up across server processes started together.
_FIRST_RUN_LOCK = 0x7463_6669_7273_7431  # "tcfirst1"


async def lock_first_run(conn: Conn) -> None:
    """Until the transaction ends, be the only one setting up the first clinic."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _FIRST_RUN_LOCK)


async def update_clinic(conn: Conn, clinic_id: UUID, changes: dict[str, Any]) -> ClinicRecord:
    row = await conn.fetchrow(
        "UPDATE clinics SET name = COALESCE($2, name), timezone = COALESCE($3, timezone) "
        "WHERE id = $1 RETURNING id, name, timezone, created_at",
        clinic_id,
        changes.get("name"),
        changes.get("timezone"),
    )
    assert row is not None
    return _clinic(row)


async def insert_user(
    conn: Conn,
    *,
    clinic_id: UUID,
    email: str,
    password_hash: str,
    role: Role,
    full_name: str,
    phone: str | None = None,
    date_of_birth: Any = None,
) -> UserRecord | None:
    """Insert a user; None when the e-mail address is already taken (by its
    :func:`~teleconsult.accounts.emails.email_key`, in any clinic)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO users
            (clinic_id, email, email_key, password_hash, role, full_name, phone, date_of_birth)
        VALUES ($1, $2, $8, $3, $4::user_role, $5, $6, $7)
        ON CONFLICT (email_key) DO NOTHING
        RETURNING {_USER_COLUMNS}
        """,
        clinic_id,
        email,
        password_hash,
        role.value,
        full_name,
        phone,
        date_of_birth,
        email_key(email),
    )
    return _user(row) if row else None


# The outbox kind that tells an account's owner someone tried to register their address.
REGISTRATION_ATTEMPT = "registration_attempt"


async def insert_or_find_user(
    conn: Conn,
    *,
    clinic_id: UUID,
    email: str,
    password_hash: str,
    role: Role,
    full_name: str,
    phone: str | None = None,
    date_of_birth: Any = None,
) -> tuple[UserRecord, bool]:
    """Insert a user, or find the one holding the address; True when inserted.

    When the address is taken, its owner gets a ``registration_attempt`` notice in
    the outbox (at most one unsent per account). One statement either way, so a
    registration does the same work whether the address is free or taken.
    """
    row = await conn.fetchrow(
        f"""
        WITH inserted AS (
            INSERT INTO users
                (clinic_id, email, email_key, password_hash, role, full_name, phone,
                 date_of_birth)
            VALUES ($1, $2, $8, $3, $4::user_role, $5, $6, $7)
            ON CONFLICT (email_key) DO NOTHING
            RETURNING {_USER_COLUMNS}
        ),
        existing AS (
            SELECT {_USER_COLUMNS} FROM users
            WHERE email_key = $8 AND NOT EXISTS (SELECT FROM inserted)
        ),
        notice AS (
            INSERT INTO notification_outbox (kind, user_id, due_at)
            SELECT $9, id, now() FROM existing
            ON CONFLICT (user_id, kind)
                WHERE appointment_id IS NULL AND thread_id IS NULL AND sent_at IS NULL
                    AND cancelled_at IS NULL AND failed_at IS NULL
            DO NOTHING
        )
        SELECT true AS created, * FROM inserted
        UNION ALL
        SELECT false, * FROM existing
        """,
        clinic_id,
        email,
        password_hash,
        role.value,
        full_name,
        phone,
        date_of_birth,
        email_key(email),
        REGISTRATION_ATTEMPT,
    )
    if row is None:
        # The holder committed while this statement waited on it: the statement's
        # snapshot predates that row, a new statement's does not. (No notice then:
        # two registrations of one new address at the same moment.)
        row = await conn.fetchrow(
            f"SELECT false AS created, {_USER_COLUMNS} FROM users WHERE email_key = $1",
            email_key(email),
        )
    assert row is not None
    values = dict(row)
    created = bool(values.pop("created"))
    values["role"] = Role(values["role"])
    return UserRecord(**values), created


async def get_user(conn: Conn, user_id: UUID) -> UserRecord | None:
    row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return _user(row) if row else None


async def get_credentials(conn: Conn, email: str) -> tuple[UserRecord, str] | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE email_key = $1", email_key(email)
    )
    if row is None:
        return None
    values = dict(row)
    password_hash = values.pop("password_hash")
    values["role"] = Role(values["role"])
    return UserRecord(**values), password_hash


async def get_password_hash(conn: Conn, user_id: UUID) -> str | None:
    value = await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id)
    return str(value) if value is not None else None


async def set_password_hash(conn: Conn, user_id: UUID, password_hash: str) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
        user_id,
        password_hash,
    )


async def list_users(
    conn: Conn,
    *,
    clinic_id: UUID,
    roles: list[Role],
    after: tuple[datetime, UUID] | None,
    limit: int,
    search: str | None = None,
) -> list[UserRecord]:
    """Users of a clinic with one of ``roles``, ordered by (created_at, id), after a cursor.

    ``search`` matches the name (case-insensitive) or the phone's digits; leading
    zeros of the searched digits are ignored, so a local "0700 123" finds a
    stored "+254 700 123 456".
    """
    rows = await conn.fetch(
        f"""
        SELECT {_USER_COLUMNS} FROM users
        WHERE clinic_id = $1
          AND role::text = ANY($2::text[])
          AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
          AND ($6::text IS NULL
               OR full_name ILIKE '%' || $6 || '%'
               OR regexp_replace(coalesce(phone, ''), '[^0-9]', '', 'g')
                  LIKE '%' || nullif(ltrim(regexp_replace($6, '[^0-9]', '', 'g'), '0'), '') || '%')
        ORDER BY created_at, id
        LIMIT $5
        """,
        clinic_id,
        [role.value for role in roles],
        after[0] if after else None,
        after[1] if after else None,
        limit,
        search,
    )
    return [_user(row) for row in rows]


async def update_user(conn: Conn, user_id: UUID, changes: dict[str, Any]) -> UserRecord:
    """Apply the given column changes (keys are trusted column names)."""
    allowed = {"role", "status", "full_name", "phone", "date_of_birth"}
    assignments = []
    values: list[Any] = [user_id]
    for column, value in changes.items():
        if column not in allowed:
            raise ValueError(f"not an updatable column: {column}")
        values.append(value.value if isinstance(value, Role) else value)
        cast = "::user_role" if column == "role" else ""
        assignments.append(f"{column} = ${len(values)}{cast}")
    assignments.append("updated_at = now()")
    row = await conn.fetchrow(
        f"UPDATE users SET {', '.join(assignments)} WHERE id = $1 RETURNING {_USER_COLUMNS}",
        *values,
    )
    assert row is not None
    return _user(row)


async def lock_active_admins(conn: asyncpg.Connection, clinic_id: UUID) -> list[UUID]:
    """Lock and return the clinic's active admins (call inside a transaction)."""
    rows = await conn.fetch(
        "SELECT id FROM users WHERE clinic_id = $1 AND role = 'admin' AND status = 'active' "
        "ORDER BY id FOR UPDATE",
        clinic_id,
    )
    return [row["id"] for row in rows]


# --- sessions (refresh-token families) ---------------------------------------------


async def create_session(
    conn: Conn, *, user_id: UUID, expires_at: datetime, token_hash: bytes
) -> UUID:
    session_id = await conn.fetchval(
        """
        WITH s AS (
            INSERT INTO auth_sessions (user_id, expires_at) VALUES ($1, $2) RETURNING id
        )
        INSERT INTO refresh_tokens (token_hash, session_id) SELECT $3, id FROM s
        RETURNING session_id
        """,
        user_id,
        expires_at,
        token_hash,
    )
    return UUID(str(session_id))


async def lock_refresh_token(conn: asyncpg.Connection, token_hash: bytes) -> asyncpg.Record | None:
    """The token with its session and user, row-locked (call inside a transaction)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        SELECT rt.session_id, rt.used_at, s.user_id, s.revoked_at, s.expires_at, u.status
        FROM refresh_tokens rt
        JOIN auth_sessions s ON s.id = rt.session_id
        JOIN users u ON u.id = s.user_id
        WHERE rt.token_hash = $1
        FOR UPDATE OF rt, s
        """,
        token_hash,
    )
    return row


async def rotate_refresh_token(
    conn: asyncpg.Connection, *, old_hash: bytes, new_hash: bytes, session_id: UUID
) -> None:
    await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1", old_hash)
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)", new_hash, session_id
    )


async def revoke_session(conn: Conn, session_id: UUID, reason: str) -> None:
    await conn.execute(
        "UPDATE auth_sessions SET revoked_at = now(), revoked_reason = $2 "
        "WHERE id = $1 AND revoked_at IS NULL",
        session_id,
        reason,
    )


async def revoke_user_sessions(
    conn: Conn, user_id: UUID, reason: str, *, keep: UUID | None = None
) -> None:
    await conn.execute(
        "UPDATE auth_sessions SET revoked_at = now(), revoked_reason = $2 "
        "WHERE user_id = $1 AND revoked_at IS NULL AND ($3::uuid IS NULL OR id <> $3)",
        user_id,
        reason,
        keep,
    )


async def load_principal_row(conn: Conn, user_id: UUID, session_id: UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        """
        SELECT u.clinic_id, u.role::text AS role, u.status, s.revoked_at, s.expires_at
        FROM auth_sessions s JOIN users u ON u.id = s.user_id
        WHERE s.id = $2 AND u.id = $1
        """,
        user_id,
        session_id,
    )
    return row


async def load_principal_rows(conn: Conn, session_ids: list[UUID]) -> list[asyncpg.Record]:
    """``load_principal_row`` for many login sessions at once (one query)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT s.id AS session_id, s.user_id, u.clinic_id, u.role::text AS role, u.status,
               s.revoked_at
        FROM auth_sessions s JOIN users u ON u.id = s.user_id
        WHERE s.id = ANY($1::uuid[])
        """,
        session_ids,
    )
    return rows
