"""SQL for messages: appending (alone or in batches), and reading pages for resume.

Each thread's messages are numbered 1, 2, 3, ... without gaps. One statement does a
send: it takes the thread's row lock while moving ``last_seq``, checks in the same
breath that the sender is a current member sending from a current device of
theirs and that the client message id is new, inserts the message, and writes
the ``message.send`` audit event into ``audit_intake``, all in one implicit
transaction (one round trip, and no audit event can be missing for a stored
message, or the reverse).

A send whose id a concurrent twin committed first fails the unique index and
rolls back whole, so no seq is ever used up by a message that was not stored.
When the statement stores nothing, one more query tells a duplicate (the stored
seq comes back) from a refusal.

:func:`append_batch` sends many appends in ONE round trip (``fetchmany``: one
implicit transaction for the batch). Appends are ordered by thread id, keeping
arrival order within a thread, so two batches always take thread locks in the
same order and cannot deadlock; a batch that fails as a whole (a concurrent twin)
is redone one append at a time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from uuid import UUID

import asyncpg

from teleconsult.core.errors import InfrastructureError, TeleconsultError
from teleconsult.messaging.records import (
    AppendResult,
    ConflictingDuplicate,
    DeviceNotUsable,
    NotAMember,
    StoredMessage,
    ThreadNotFound,
)


@dataclass(frozen=True)
class Append:
    """One message to store, and who sends it (for the audit event)."""

    thread_id: UUID
    client_msg_id: str
    sender_user_id: UUID
    sender_device_id: UUID
    envelope: bytes
    actor_role: str


# $7 is the append's place in its batch, so rows can be matched to appends.
_APPEND = """
WITH t AS (
    UPDATE threads SET last_seq = last_seq + 1
    WHERE id = $1
      AND EXISTS (SELECT 1 FROM thread_members
                  WHERE thread_id = $1 AND user_id = $3 AND left_at IS NULL)
      AND EXISTS (SELECT 1 FROM devices WHERE id = $4 AND user_id = $3 AND revoked_at IS NULL)
      AND NOT EXISTS (SELECT 1 FROM messages WHERE thread_id = $1 AND client_msg_id = $2)
    RETURNING id, clinic_id, last_seq
), m AS (
    INSERT INTO messages (thread_id, seq, client_msg_id, sender_user_id, sender_device_id, envelope)
    SELECT id, last_seq, $2, $3, $4, $5 FROM t
    RETURNING seq, created_at
), a AS (
    INSERT INTO audit_intake
        (actor_id, actor_role, clinic_id, action, object_type, object_id, outcome, detail)
    SELECT $3, $6, t.clinic_id, 'message.send', 'thread', $1::text, 'success',
           jsonb_build_object('seq', m.seq)
    FROM t CROSS JOIN m
)
SELECT $7::int AS ord, m.seq, m.created_at FROM m
"""

# Why an append stored nothing: the message it duplicates, or what is missing.
_EXPLAIN = """
SELECT
    m.seq, m.created_at, m.sender_user_id, m.sender_device_id, sha256(m.envelope) AS digest,
    EXISTS (SELECT 1 FROM threads WHERE id = $1) AS thread,
    EXISTS (SELECT 1 FROM thread_members
            WHERE thread_id = $1 AND user_id = $3 AND left_at IS NULL) AS member,
    EXISTS (SELECT 1 FROM devices WHERE id = $4 AND user_id = $3 AND revoked_at IS NULL) AS device
FROM (SELECT 1) AS one
LEFT JOIN messages m ON m.thread_id = $1 AND m.client_msg_id = $2
"""

_ATTEMPTS = 3

Outcome = AppendResult | TeleconsultError


def _args(item: Append, ord_: int) -> tuple[object, ...]:
    return (
        item.thread_id,
        item.client_msg_id,
        item.sender_user_id,
        item.sender_device_id,
        item.envelope,
        item.actor_role,
        ord_,
    )


async def append_batch(conn: asyncpg.Connection, items: Sequence[Append]) -> list[Outcome]:
    """Append every item; for each, its result or the domain error that refused it.

    ``conn`` must not be inside a transaction: the batch is its own transaction.
    """
    if not items:
        return []
    order = sorted(range(len(items)), key=lambda i: items[i].thread_id.bytes)
    try:
        rows = await conn.fetchmany(_APPEND, [_args(items[i], i) for i in order])
    except asyncpg.PostgresError:
        # Usually a concurrent twin (unique violation); whatever it was, one append
        # must not fail the others: redo them one at a time.
        return [await _alone_or_error(conn, item) for item in items]
    stored = {row["ord"]: row for row in rows}
    outcomes: list[Outcome] = []
    for i, item in enumerate(items):
        row = stored.get(i)
        if row is not None:
            outcomes.append(AppendResult(row["seq"], False, row["created_at"]))
        else:
            outcomes.append(await _append_alone(conn, item, explain_first=True))
    return outcomes


async def append_message(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    thread_id: UUID,
    client_msg_id: str,
    sender_user_id: UUID,
    sender_device_id: UUID,
    envelope: bytes,
    actor_role: str = "member",
) -> AppendResult:
    """Store one message under the thread's next seq; committed when this returns.

    A client message id the thread already has returns the stored seq with
    ``duplicate=True`` and stores nothing, even for a sender who has left since;
    with another sender, device or envelope it raises :class:`ConflictingDuplicate`.
    Otherwise the sender must be a current member (:class:`NotAMember`) sending
    from a current device of theirs (:class:`DeviceNotUsable`).
    """
    item = Append(thread_id, client_msg_id, sender_user_id, sender_device_id, envelope, actor_role)
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as connection:
            outcome = await _append_alone(connection, item)
    else:
        outcome = await _append_alone(conn, item)
    if isinstance(outcome, TeleconsultError):
        raise outcome
    return outcome


async def _alone_or_error(conn: asyncpg.Connection, item: Append) -> Outcome:
    try:
        return await _append_alone(conn, item)
    except asyncpg.PostgresError as exc:
        return InfrastructureError(f"storing the message failed ({exc.sqlstate})")


async def _append_alone(
    conn: asyncpg.Connection, item: Append, *, explain_first: bool = False
) -> Outcome:
    for attempt in range(_ATTEMPTS):
        if not (explain_first and attempt == 0):
            try:
                row = await conn.fetchrow(_APPEND, *_args(item, 0))
            except asyncpg.UniqueViolationError:
                row = None  # a twin committed while we waited for the thread: see below
            if row is not None:
                return AppendResult(row["seq"], False, row["created_at"])
        outcome = await _explain(conn, item)
        if outcome is not None:
            return outcome
        # Membership, the device or a twin changed between the two statements: again.
    return NotAMember(f"membership of thread {item.thread_id} keeps changing; try again")


async def _explain(conn: asyncpg.Connection, item: Append) -> Outcome | None:
    row = await conn.fetchrow(
        _EXPLAIN, item.thread_id, item.client_msg_id, item.sender_user_id, item.sender_device_id
    )
    assert row is not None
    if row["seq"] is not None:
        same = (
            row["sender_user_id"] == item.sender_user_id
            and row["sender_device_id"] == item.sender_device_id
            and row["digest"] == hashlib.sha256(item.envelope).digest()
        )
        if not same:
            return ConflictingDuplicate(item.thread_id, item.client_msg_id, row["seq"])
        return AppendResult(row["seq"], True, row["created_at"])
    if not row["thread"]:
        return ThreadNotFound(item.thread_id)
    if not row["member"]:
        return NotAMember(f"user {item.sender_user_id} is not a member of thread {item.thread_id}")
    if not row["device"]:
        return DeviceNotUsable(f"device {item.sender_device_id} cannot send for this user")
    return None


# --- reading ------------------------------------------------------------------------------

_MESSAGE_FIELDS = [field.name for field in fields(StoredMessage)]

# One statement per thread: the caller's membership, the page, the thread's last_seq,
# and the ``message.read`` audit event (only when the caller may read).
_PAGE = """
WITH allowed AS (
    SELECT t.id, t.last_seq, t.clinic_id FROM threads t
    WHERE t.id = $1 AND EXISTS (SELECT 1 FROM thread_members
                                WHERE thread_id = $1 AND user_id = $4 AND left_at IS NULL)
), page AS (
    SELECT m.* FROM allowed a
    JOIN LATERAL (SELECT * FROM messages WHERE thread_id = a.id AND seq > $2
                  ORDER BY seq LIMIT $3) m ON true
), audit AS (
    INSERT INTO audit_intake
        (actor_id, actor_role, clinic_id, action, object_type, object_id, outcome, detail)
    SELECT $4, $5, $6, 'message.read', 'thread', $1::text, 'success',
           jsonb_build_object('after', $2::bigint, 'results', (SELECT count(*) FROM page))
    FROM allowed
)
SELECT $7::int AS ord, a.last_seq, p.thread_id, p.seq, p.client_msg_id, p.sender_user_id,
       p.sender_device_id, p.envelope, p.created_at
FROM allowed a LEFT JOIN page p ON true
ORDER BY p.seq
"""


@dataclass(frozen=True)
class PageRequest:
    thread_id: UUID
    after_seq: int
    limit: int


@dataclass(frozen=True)
class Page:
    messages: list[StoredMessage]
    complete: bool


async def read_pages(
    conn: asyncpg.Connection,
    requests: Sequence[PageRequest],
    *,
    reader: UUID,
    reader_role: str,
    clinic_id: UUID,
) -> list[Page | None]:
    """Each thread's next page for ``reader``, audited; None where they are not a member.

    One round trip for all threads (one implicit transaction).
    """
    if not requests:
        return []
    for request in requests:
        if request.limit < 1:
            raise ValueError("limit must be at least 1")
    args = [
        (r.thread_id, r.after_seq, r.limit, reader, reader_role, clinic_id, i)
        for i, r in enumerate(requests)
    ]
    rows = await conn.fetchmany(_PAGE, args)
    by_request: dict[int, list[asyncpg.Record]] = {}
    for row in rows:
        by_request.setdefault(row["ord"], []).append(row)
    pages: list[Page | None] = []
    for i, request in enumerate(requests):
        found = by_request.get(i)
        if not found:
            pages.append(None)
            continue
        page = [
            StoredMessage(**{name: row[name] for name in _MESSAGE_FIELDS})
            for row in found
            if row["seq"] is not None
        ]
        reached = page[-1].seq if page else request.after_seq
        pages.append(Page(page, reached >= found[0]["last_seq"]))
    return pages


async def messages_after(
    conn: asyncpg.Connection | asyncpg.Pool, thread_id: UUID, after_seq: int, limit: int
) -> tuple[list[StoredMessage], bool]:
    """Up to ``limit`` messages with seq > ``after_seq``, in order, and whether the page
    reaches the thread's newest message (``complete``). Not audited: for the server's
    own use (tests, tools); readers go through :func:`read_pages`.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    rows = await conn.fetch(
        """
        SELECT t.last_seq, m.thread_id, m.seq, m.client_msg_id, m.sender_user_id,
               m.sender_device_id, m.envelope, m.created_at
        FROM threads t
        LEFT JOIN LATERAL (
            SELECT * FROM messages WHERE thread_id = t.id AND seq > $2 ORDER BY seq LIMIT $3
        ) m ON true
        WHERE t.id = $1
        ORDER BY m.seq
        """,
        thread_id,
        after_seq,
        limit,
    )
    if not rows:
        raise ThreadNotFound(thread_id)
    page = [
        StoredMessage(**{name: row[name] for name in _MESSAGE_FIELDS})
        for row in rows
        if row["seq"] is not None
    ]
    reached = page[-1].seq if page else after_seq
    return page, reached >= rows[0]["last_seq"]
