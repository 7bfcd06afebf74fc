"""SQL of the notification outbox: enqueue in the changing transaction, claim with a lease.

A row's subject is an appointment (reminders, changes) or a thread member
(chat news, coalesced to one unsent row per member and thread).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.scheduling.records import NewNotification, OutboxItem
from teleconsult.scheduling.store import rows_affected

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


def _outbox_columns(alias: str) -> str:
    # payload as text: the caller's connection may lack the pool's jsonb codec.
    return ", ".join(
        f"{alias}.{column}" if column != "payload" else f"{alias}.payload::text AS payload"
        for column in (
            "id kind appointment_id due_at payload attempts locked_until claimed_by sent_at "
            "cancelled_at failed_at last_error created_at thread_id user_id"
        ).split()
    )


_PENDING = "sent_at IS NULL AND cancelled_at IS NULL AND failed_at IS NULL"


def _outbox_item(row: asyncpg.Record) -> OutboxItem:
    values = dict(row)
    values["payload"] = json.loads(values["payload"])
    return OutboxItem(**values)


# Skips a notification already pending or sent for (appointment, kind, due_at).
# With enqueue_params, for a statement that enqueues in a CTE of its own (a booking).
ON_DUPLICATE = "ON CONFLICT (appointment_id, kind, due_at) WHERE cancelled_at IS NULL DO NOTHING"


def enqueue_params(
    items: Iterable[NewNotification],
) -> tuple[list[str], list[UUID], list[datetime], list[str]]:
    """The arrays of :func:`enqueue`'s statement: ``unnest($n::text[], $n+1::uuid[],
    $n+2::timestamptz[], $n+3::text[]) AS n (kind, appointment_id, due_at, payload)``,
    the payload as JSON text (insert ``payload::jsonb``)."""
    batch = list(items)
    return (
        [item.kind for item in batch],
        [item.appointment_id for item in batch],
        [item.due_at for item in batch],
        [json.dumps(item.payload) for item in batch],
    )


async def enqueue(conn: Conn, items: Iterable[NewNotification]) -> int:
    """Add notifications; one already pending or sent for (appointment, kind, due_at) is skipped.

    Returns how many rows were added. Call it in the transaction that books,
    moves or cancels, so the notification exists if and only if the change does.
    """
    batch = list(items)
    if not batch:
        return 0
    status = await conn.execute(
        f"""
        INSERT INTO notification_outbox (kind, appointment_id, due_at, payload)
        SELECT kind, appointment_id, due_at, payload::jsonb
        FROM unnest($1::text[], $2::uuid[], $3::timestamptz[], $4::text[])
            AS n (kind, appointment_id, due_at, payload)
        {ON_DUPLICATE}
        """,
        *enqueue_params(batch),
    )
    return rows_affected(status)


async def enqueue_thread_news(
    conn: Conn, *, kind: str, thread_id: UUID, seq: int, user_ids: Iterable[UUID]
) -> list[UUID]:
    """Tell these users, in one statement, that the thread has news; return whom it added.

    ``seq`` is the message that is news. A user gets a row only when they are a
    current member, have no unsent row of ``kind`` for the thread (coalescing:
    that row will announce this message too), and have no row, sent or not,
    raised by this message or a later one (a client retrying a message already
    announced). A row failed for good or withdrawn does not count. The row is
    due at once and its payload is empty: the webhook carries ids only.
    """
    users = list(dict.fromkeys(user_ids))
    if not users:
        return []
    rows = await conn.fetch(
        f"""
        INSERT INTO notification_outbox (kind, thread_id, user_id, thread_seq, due_at)
        SELECT $1, m.thread_id, m.user_id, $3, now()
        FROM thread_members m
        WHERE m.thread_id = $2 AND m.user_id = ANY($4::uuid[]) AND m.left_at IS NULL
            AND NOT EXISTS (
                SELECT 1 FROM notification_outbox o
                WHERE o.thread_id = m.thread_id AND o.user_id = m.user_id AND o.kind = $1
                    AND o.thread_seq >= $3 AND o.cancelled_at IS NULL AND o.failed_at IS NULL
            )
        ON CONFLICT (thread_id, user_id, kind) WHERE thread_id IS NOT NULL AND {_PENDING}
        DO NOTHING
        RETURNING user_id
        """,
        kind,
        thread_id,
        seq,
        users,
    )
    return [row["user_id"] for row in rows]


async def claim_due(
    conn: Conn, *, now: datetime, lease: timedelta, limit: int, worker_id: str
) -> list[OutboxItem]:
    """Lease up to ``limit`` pending rows due at ``now`` to ``worker_id`` until ``now + lease``.

    Safe to run concurrently: SKIP LOCKED hands each row to one caller, and a
    row whose lease is still running is not due. A worker that dies without
    marking its rows leaves them to be claimed again once the lease expires.
    """
    rows = await conn.fetch(
        f"""
        WITH due AS (
            SELECT id FROM notification_outbox
            WHERE {_PENDING} AND due_at <= $1 AND (locked_until IS NULL OR locked_until <= $1)
            ORDER BY due_at, id
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        )
        UPDATE notification_outbox o
        SET locked_until = $1 + $2::interval, claimed_by = $4, attempts = o.attempts + 1
        FROM due WHERE o.id = due.id
        RETURNING {_outbox_columns("o")}
        """,
        now,
        lease,
        limit,
        worker_id,
    )
    items = [_outbox_item(row) for row in rows]
    items.sort(key=lambda item: (item.due_at, item.id))
    return items


async def mark_sent(conn: Conn, item_id: int, worker_id: str) -> bool:
    """Record delivery; False (and no change) when another worker holds the row now."""
    status = await conn.execute(
        """
        UPDATE notification_outbox SET sent_at = now(), locked_until = NULL, last_error = NULL
        WHERE id = $1 AND claimed_by = $2 AND sent_at IS NULL
        """,
        item_id,
        worker_id,
    )
    return rows_affected(status) == 1


async def mark_failed(
    conn: Conn, item_id: int, worker_id: str, *, error: str, retry_at: datetime | None
) -> bool:
    """Release the row until ``retry_at``, or give up on it when ``retry_at`` is None.

    ``error`` is stored (truncated): keep personal data out of it. False when
    another worker holds the row now.
    """
    status = await conn.execute(
        """
        UPDATE notification_outbox
        SET last_error = left($3, 1000), locked_until = $4, claimed_by = NULL,
            failed_at = CASE WHEN $4::timestamptz IS NULL THEN now() END
        WHERE id = $1 AND claimed_by = $2 AND sent_at IS NULL
        """,
        item_id,
        worker_id,
        error,
        retry_at,
    )
    return rows_affected(status) == 1


async def cancel_pending(
    conn: Conn, appointment_id: UUID, *, kinds: Iterable[str] | None = None
) -> int:
    """Withdraw the appointment's unsent notifications (all, or those of ``kinds``).

    For a cancelled or moved appointment: call it before enqueueing the change
    notice and the new reminders. A row a worker is sending right now may
    still go out; its mark_sent is then recorded as usual.
    """
    status = await conn.execute(
        f"""
        UPDATE notification_outbox SET cancelled_at = now()
        WHERE appointment_id = $1 AND {_PENDING} AND ($2::text[] IS NULL OR kind = ANY($2))
        """,
        appointment_id,
        None if kinds is None else list(kinds),
    )
    return rows_affected(status)


async def list_outbox(conn: Conn, appointment_id: UUID) -> list[OutboxItem]:
    """Every outbox row of the appointment, oldest first (for inspection and tests)."""
    rows = await conn.fetch(
        f"SELECT {_outbox_columns('o')} FROM notification_outbox o WHERE o.appointment_id = $1 "
        "ORDER BY o.id",
        appointment_id,
    )
    return [_outbox_item(row) for row in rows]


async def list_thread_news(conn: Conn, thread_id: UUID) -> list[OutboxItem]:
    """Every chat-news row of the thread, oldest first (for inspection and tests)."""
    rows = await conn.fetch(
        f"SELECT {_outbox_columns('o')} FROM notification_outbox o WHERE o.thread_id = $1 "
        "ORDER BY o.id",
        thread_id,
    )
    return [_outbox_item(row) for row in rows]
