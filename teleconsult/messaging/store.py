"""SQL for messaging: devices, threads and members, receipts (messages: message_store.py).

The functions take a pool or a connection. On a connection already inside a
transaction, the multi-statement writes run in a savepoint of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.messaging.records import (
    AppointmentHasThread,
    Device,
    DeviceKeyInUse,
    InvalidDeviceKey,
    InvalidMembers,
    Member,
    NotAMember,
    NotInClinic,
    Receipt,
    Thread,
    ThreadKind,
    ThreadNotFound,
)

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

KEY_BYTES = 32  # X25519 and Ed25519 public keys alike


_CLINIC_FKEYS = {
    "threads_created_by_fkey": "the thread's creator",
    "threads_appointment_fkey": "the appointment",
    "thread_members_user_clinic_fkey": "a member",
}


@asynccontextmanager
async def _connection(conn: Conn) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as connection:
            yield connection
    else:
        yield conn


def _rows_affected(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


# --- devices --------------------------------------------------------------------------

_DEVICE_COLUMNS = (
    "d.id, d.user_id, d.x25519_public, d.ed25519_public, d.label, d.created_at, d.revoked_at"
)


def _device(row: asyncpg.Record) -> Device:
    return Device(**dict(row))


async def register_device(
    conn: Conn,
    *,
    user_id: UUID,
    x25519_public: bytes,
    ed25519_public: bytes,
    label: str | None = None,
) -> Device:
    """Register a device's public keys.

    The same keys again from the same user return the device registered first
    (a retried registration). Raises :class:`DeviceKeyInUse` when the signing key
    is another user's, paired with another encryption key, or revoked.
    """
    if len(x25519_public) != KEY_BYTES or len(ed25519_public) != KEY_BYTES:
        raise InvalidDeviceKey(f"public keys are {KEY_BYTES} bytes")
    row = await conn.fetchrow(
        f"""
        INSERT INTO devices AS d (user_id, x25519_public, ed25519_public, label)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (ed25519_public) DO NOTHING
        RETURNING {_DEVICE_COLUMNS}
        """,
        user_id,
        x25519_public,
        ed25519_public,
        label,
    )
    if row is None:
        row = await conn.fetchrow(
            f"SELECT {_DEVICE_COLUMNS} FROM devices d WHERE d.ed25519_public = $1", ed25519_public
        )
        if (
            row is None
            or row["user_id"] != user_id
            or row["x25519_public"] != x25519_public
            or row["revoked_at"] is not None
        ):
            raise DeviceKeyInUse("this signing key is registered to another device")
    return _device(row)


async def get_device(conn: Conn, device_id: UUID) -> Device | None:
    """The device, revoked or not."""
    row = await conn.fetchrow(f"SELECT {_DEVICE_COLUMNS} FROM devices d WHERE d.id = $1", device_id)
    return _device(row) if row else None


async def list_devices(conn: Conn, user_ids: Sequence[UUID]) -> list[Device]:
    """The current (not revoked) devices of these users."""
    rows = await conn.fetch(
        f"""
        SELECT {_DEVICE_COLUMNS} FROM devices d
        WHERE d.user_id = ANY($1::uuid[]) AND d.revoked_at IS NULL
        ORDER BY d.user_id, d.created_at, d.id
        """,
        list(user_ids),
    )
    return [_device(row) for row in rows]


async def thread_devices(conn: Conn, thread_id: UUID) -> list[Device]:
    """The current devices of the thread's current members: whom a sender encrypts for."""
    rows = await conn.fetch(
        f"""
        SELECT {_DEVICE_COLUMNS} FROM thread_members m JOIN devices d ON d.user_id = m.user_id
        WHERE m.thread_id = $1 AND m.left_at IS NULL AND d.revoked_at IS NULL
        ORDER BY d.user_id, d.created_at, d.id
        """,
        thread_id,
    )
    return [_device(row) for row in rows]


async def revoke_device(conn: Conn, user_id: UUID, device_id: UUID) -> bool:
    """Revoke one of the user's devices; False when it is not theirs or already revoked."""
    status = await conn.execute(
        "UPDATE devices SET revoked_at = now() "
        "WHERE id = $2 AND user_id = $1 AND revoked_at IS NULL",
        user_id,
        device_id,
    )
    return _rows_affected(status) == 1


# --- threads and members --------------------------------------------------------------

_THREAD_COLUMNS = (
    "t.id, t.clinic_id, t.kind, t.appointment_id, t.created_by, t.created_at, t.last_seq"
)
_MEMBER_COLUMNS = "m.thread_id, m.user_id, m.role, m.joined_at, m.left_at"


def _thread(row: asyncpg.Record) -> Thread:
    values = dict(row)
    values["kind"] = ThreadKind(values["kind"])
    return Thread(**values)


def _member(row: asyncpg.Record) -> Member:
    return Member(**dict(row))


@contextmanager
def _same_clinic() -> Iterator[None]:
    """Turn the composite foreign keys' refusal into :class:`NotInClinic`."""
    try:
        yield
    except asyncpg.ForeignKeyViolationError as exc:
        what = _CLINIC_FKEYS.get(exc.constraint_name or "")
        if what is None:
            raise
        raise NotInClinic(f"{what} is not of the thread's clinic") from exc


async def create_thread(
    conn: Conn,
    *,
    clinic_id: UUID,
    kind: ThreadKind,
    created_by: UUID,
    members: Sequence[tuple[UUID, str]],
    appointment_id: UUID | None = None,
) -> Thread:
    """Create a thread with its members, each given as (user id, role in the thread).

    Raises :class:`InvalidMembers` (a user twice, no member, a direct thread
    without exactly two), :class:`NotInClinic` (refused by the database's
    composite foreign keys) or :class:`AppointmentHasThread`.
    """
    kind = ThreadKind(kind)
    user_ids = [user_id for user_id, _ in members]
    if len(set(user_ids)) != len(user_ids):
        raise InvalidMembers("a user is listed twice")
    if not user_ids:
        raise InvalidMembers("a thread needs at least one member")
    if kind is ThreadKind.DIRECT and len(user_ids) != 2:
        raise InvalidMembers("a direct thread has exactly two members")
    async with _connection(conn) as connection:
        try:
            with _same_clinic():
                async with connection.transaction():
                    row = await connection.fetchrow(
                        f"""
                        INSERT INTO threads AS t (clinic_id, kind, appointment_id, created_by)
                        VALUES ($1, $2, $3, $4) RETURNING {_THREAD_COLUMNS}
                        """,
                        clinic_id,
                        kind.value,
                        appointment_id,
                        created_by,
                    )
                    assert row is not None
                    await connection.execute(
                        "INSERT INTO thread_members (thread_id, clinic_id, user_id, role) "
                        "SELECT $1, $2, user_id, role FROM unnest($3::uuid[], $4::text[]) "
                        "AS m (user_id, role)",
                        row["id"],
                        clinic_id,
                        user_ids,
                        [role for _, role in members],
                    )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "threads_appointment_id_key" or appointment_id is None:
                raise
            existing = await connection.fetchval(
                "SELECT id FROM threads WHERE appointment_id = $1", appointment_id
            )
            raise AppointmentHasThread(appointment_id, existing) from exc
    return _thread(row)


async def get_thread(conn: Conn, thread_id: UUID) -> Thread | None:
    row = await conn.fetchrow(f"SELECT {_THREAD_COLUMNS} FROM threads t WHERE t.id = $1", thread_id)
    return _thread(row) if row else None


async def member_thread(conn: Conn, thread_id: UUID, user_id: UUID) -> Thread | None:
    """The thread, when the user is a current member of it (one query)."""
    row = await conn.fetchrow(
        f"""
        SELECT {_THREAD_COLUMNS} FROM threads t
        WHERE t.id = $1 AND EXISTS (SELECT 1 FROM thread_members
                                    WHERE thread_id = $1 AND user_id = $2 AND left_at IS NULL)
        """,
        thread_id,
        user_id,
    )
    return _thread(row) if row else None


async def thread_for_appointment(conn: Conn, appointment_id: UUID) -> Thread | None:
    row = await conn.fetchrow(
        f"SELECT {_THREAD_COLUMNS} FROM threads t WHERE t.appointment_id = $1", appointment_id
    )
    return _thread(row) if row else None


async def threads_for_user(conn: Conn, user_id: UUID) -> list[Thread]:
    """The threads the user is a current member of, with their last_seq."""
    rows = await conn.fetch(
        f"""
        SELECT {_THREAD_COLUMNS} FROM thread_members m JOIN threads t ON t.id = m.thread_id
        WHERE m.user_id = $1 AND m.left_at IS NULL
        ORDER BY t.created_at, t.id
        """,
        user_id,
    )
    return [_thread(row) for row in rows]


async def add_member(conn: Conn, *, thread_id: UUID, user_id: UUID, role: str) -> Member:
    """Add a user to a care-team thread, or bring back one who left (joined_at restarts).

    A direct thread keeps the two members it was created with.
    """
    with _same_clinic():
        row = await conn.fetchrow(
            f"""
            INSERT INTO thread_members AS m (thread_id, clinic_id, user_id, role)
            SELECT id, clinic_id, $2, $3 FROM threads WHERE id = $1 AND kind = 'care_team'
            ON CONFLICT (thread_id, user_id) DO UPDATE SET
                role = EXCLUDED.role,
                joined_at = CASE WHEN m.left_at IS NULL THEN m.joined_at ELSE now() END,
                left_at = NULL
            RETURNING {_MEMBER_COLUMNS}
            """,
            thread_id,
            user_id,
            role,
        )
    if row is None:
        if await get_thread(conn, thread_id) is None:
            raise ThreadNotFound(thread_id)
        raise InvalidMembers("a direct thread keeps its two members")
    return _member(row)


async def remove_member(conn: Conn, thread_id: UUID, user_id: UUID) -> bool:
    """The user leaves the thread; False when they were not a current member."""
    status = await conn.execute(
        "UPDATE thread_members SET left_at = now() "
        "WHERE thread_id = $1 AND user_id = $2 AND left_at IS NULL",
        thread_id,
        user_id,
    )
    return _rows_affected(status) == 1


async def list_members(conn: Conn, thread_id: UUID) -> list[Member]:
    """The thread's current members."""
    rows = await conn.fetch(
        f"SELECT {_MEMBER_COLUMNS} FROM thread_members m "
        "WHERE m.thread_id = $1 AND m.left_at IS NULL ORDER BY m.joined_at, m.user_id",
        thread_id,
    )
    return [_member(row) for row in rows]


async def member_ids(conn: Conn, thread_id: UUID) -> list[UUID]:
    """The ids of the thread's current members: whom live events go to."""
    rows = await conn.fetch(
        "SELECT user_id FROM thread_members WHERE thread_id = $1 AND left_at IS NULL",
        thread_id,
    )
    return [row["user_id"] for row in rows]


async def co_member_ids(conn: Conn, user_id: UUID, *, max_thread_size: int) -> list[UUID]:
    """Everyone who shares a current thread of at most ``max_thread_size`` members
    with the user, the user excluded: whom presence news goes to. Bigger threads
    are left out (one connect in a 1,000-member group would push to every
    member); their members ask with ``presence`` instead."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT other.user_id FROM thread_members mine
        JOIN thread_members other
          ON other.thread_id = mine.thread_id AND other.left_at IS NULL
        WHERE mine.user_id = $1 AND mine.left_at IS NULL AND other.user_id <> $1
          AND (SELECT count(*) FROM thread_members m
               WHERE m.thread_id = mine.thread_id AND m.left_at IS NULL) <= $2
        """,
        user_id,
        max_thread_size,
    )
    return [row["user_id"] for row in rows]


async def is_member(conn: Conn, thread_id: UUID, user_id: UUID) -> bool:
    """Whether the user is a current member: who may read and send."""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM thread_members "
        "WHERE thread_id = $1 AND user_id = $2 AND left_at IS NULL)",
        thread_id,
        user_id,
    )
    return bool(found)


# --- receipts -------------------------------------------------------------------------

_RECEIPT_COLUMNS = "r.thread_id, r.user_id, r.delivered_seq, r.read_seq, r.updated_at"


async def update_receipt(
    conn: Conn,
    *,
    thread_id: UUID,
    user_id: UUID,
    delivered_seq: int | None = None,
    read_seq: int | None = None,
) -> Receipt:
    """Move a current member's markers forward and return them.

    A lower value than stored changes nothing, a value past the thread's
    last_seq counts as last_seq, and reading implies delivery.
    """
    row = await conn.fetchrow(
        f"""
        INSERT INTO receipts AS r (thread_id, user_id, delivered_seq, read_seq)
        SELECT t.id, $2,
               LEAST(GREATEST($3::bigint, $4::bigint, 0), t.last_seq),
               LEAST(GREATEST($4::bigint, 0), t.last_seq)
        FROM threads t
        WHERE t.id = $1 AND EXISTS (
            SELECT 1 FROM thread_members
            WHERE thread_id = $1 AND user_id = $2 AND left_at IS NULL)
        ON CONFLICT (thread_id, user_id) DO UPDATE SET
            delivered_seq = GREATEST(r.delivered_seq, EXCLUDED.delivered_seq),
            read_seq = GREATEST(r.read_seq, EXCLUDED.read_seq),
            updated_at = now()
        RETURNING {_RECEIPT_COLUMNS}
        """,
        thread_id,
        user_id,
        delivered_seq,
        read_seq,
    )
    if row is None:
        if await get_thread(conn, thread_id) is None:
            raise ThreadNotFound(thread_id)
        raise NotAMember(f"user {user_id} is not a member of thread {thread_id}")
    return Receipt(**dict(row))


async def list_receipts(conn: Conn, thread_id: UUID) -> list[Receipt]:
    """The receipts of the thread's current members (a member without one has none yet)."""
    rows = await conn.fetch(
        f"""
        SELECT {_RECEIPT_COLUMNS} FROM receipts r
        JOIN thread_members m ON m.thread_id = r.thread_id AND m.user_id = r.user_id
        WHERE r.thread_id = $1 AND m.left_at IS NULL
        ORDER BY r.user_id
        """,
        thread_id,
    )
    return [Receipt(**dict(row)) for row in rows]
