"""Writing and reading the audit trail in PostgreSQL (migrations 0002 and 0009).

Writing is an insert into ``audit_intake``, nothing more: no lock, no chain.
Pass the connection of the transaction that made the audited change (or the
read) and the event commits or rolls back with it::

    async with pool.acquire() as conn, conn.transaction():
        await store.do_the_change(conn, ...)
        await audit.record(AuditEvent.by(principal, "patient.update", "patient", pid), conn)

The sequencer (``sequencer.py``, one leader per cluster) moves committed
intake rows into the hash chain ``audit_log`` in batches, usually within
about 100 ms. :meth:`AuditTrail.list_for_clinic` and the verifier read the
chain, so an event shows there only once it is chained.

To write the event inside a statement of one's own (one round trip, e.g. a
CTE that inserts a message and its audit event together), use
:data:`INTAKE_COLUMNS`, :func:`intake_placeholders` and :func:`intake_params`;
the event is validated by :func:`intake_params`::

    cols = ", ".join(INTAKE_COLUMNS)
    sql = f'''
        WITH m AS (INSERT INTO messages (thread_id, body) VALUES ($1, $2)
                   ON CONFLICT DO NOTHING RETURNING id),
             a AS (INSERT INTO audit_intake ({cols})
                   SELECT {intake_placeholders(3, object_id="COALESCE({}, m.id::text)")}
                   FROM m)
        SELECT id FROM m
    '''
    await conn.fetchval(sql, thread_id, body, *intake_params(event))

``SELECT ... FROM m`` writes the event only when ``m`` wrote a row; a template
such as ``object_id="COALESCE({}, m.id::text)"`` lets SQL fill a value that
the event leaves None (``{}`` stands for the typed placeholder, which is always
used, so parameter numbers do not shift).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any, Final, Literal, get_args
from uuid import UUID

import asyncpg

from teleconsult.audit.chain import AuditRecord, ChainHead, DetailValue
from teleconsult.audit.checkpoints import Checkpoint
from teleconsult.core.errors import TeleconsultError
from teleconsult.core.identity import Principal

__all__ = [
    "INTAKE_COLUMNS",
    "AuditError",
    "AuditEvent",
    "AuditRecord",
    "AuditTrail",
    "InvalidAuditEvent",
    "Outcome",
    "at_seqs",
    "count_waiting",
    "intake_params",
    "intake_placeholders",
    "iter_checkpointed",
    "iter_orphan_checkpoints",
    "iter_records",
    "read_head",
    "validate_event",
]

Outcome = Literal["success", "failure", "denied"]
OUTCOMES: Final = frozenset(get_args(Outcome))

MAX_DETAIL_BYTES: Final = 2048
MAX_DETAIL_KEYS: Final = 32
MAX_LIST_LIMIT: Final = 500
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*$")
_DETAIL_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
# Detail is for non-clinical facts; these names suggest a credential slipped in.
_SECRET_WORDS: Final = ("password", "passwd", "secret", "token", "authorization", "cookie")
_TEXT_LIMITS: Final = {"actor_role": 64, "object_type": 64, "object_id": 200, "ip": 64}


class AuditError(TeleconsultError):
    """The audit trail was misused, or its tables are not in a writable state."""


class InvalidAuditEvent(AuditError):
    """An event cannot be recorded as given; the message names the field."""


@dataclass(frozen=True)
class AuditEvent:
    """What happened, as told by the code that did it. Never clinical content."""

    action: str
    outcome: Outcome = "success"
    actor_id: UUID | None = None
    actor_role: str | None = None
    clinic_id: UUID | None = None
    object_type: str | None = None
    object_id: str | None = None
    ip: str | None = None
    detail: Mapping[str, DetailValue] = field(default_factory=dict)

    @classmethod
    def by(
        cls,
        principal: Principal,
        action: str,
        object_type: str,
        object_id: object | None = None,
        *,
        clinic_id: UUID | None = None,
        ip: str | None = None,
        detail: Mapping[str, DetailValue] | None = None,
    ) -> AuditEvent:
        """What a signed-in user did to an object (of their own clinic unless given)."""
        return cls(
            action=action,
            actor_id=principal.user_id,
            actor_role=principal.role.value,
            clinic_id=principal.clinic_id if clinic_id is None else clinic_id,
            object_type=object_type,
            object_id=None if object_id is None else str(object_id),
            ip=ip,
            detail=dict(detail or {}),
        )


def _check_text(name: str, value: str, limit: int) -> None:
    if not value or len(value) > limit:
        raise InvalidAuditEvent(f"{name}: must be 1 to {limit} characters")
    if "\x00" in value:
        raise InvalidAuditEvent(f"{name}: must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAuditEvent(f"{name}: must be valid Unicode text") from None


def _validate_detail(detail: Mapping[str, DetailValue]) -> dict[str, DetailValue]:
    if not isinstance(detail, Mapping):
        raise InvalidAuditEvent("detail: must be a mapping")
    if len(detail) > MAX_DETAIL_KEYS:
        raise InvalidAuditEvent(f"detail: at most {MAX_DETAIL_KEYS} keys")
    clean: dict[str, DetailValue] = {}
    for key, value in detail.items():
        if not isinstance(key, str) or not _DETAIL_KEY.fullmatch(key):
            raise InvalidAuditEvent(
                f"detail: key {key!r} must be 1 to 64 letters, digits, '_', '.' or '-'"
            )
        if any(word in key.lower() for word in _SECRET_WORDS):
            raise InvalidAuditEvent(f"detail.{key}: credentials do not belong in the audit trail")
        if isinstance(value, str):
            _check_text(f"detail.{key}", value, MAX_DETAIL_BYTES)
        elif value is not None and not isinstance(value, int):
            raise InvalidAuditEvent(
                f"detail.{key}: must be a string, integer, boolean or null, "
                f"not {type(value).__name__}"
            )
        clean[key] = value
    if len(_detail_json(clean).encode("utf-8")) > MAX_DETAIL_BYTES:
        raise InvalidAuditEvent(f"detail: larger than {MAX_DETAIL_BYTES} bytes as JSON")
    return clean


def _detail_json(detail: Mapping[str, DetailValue]) -> str:
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def validate_event(event: AuditEvent) -> AuditEvent:
    """Return ``event`` with a checked plain-dict ``detail``; raise InvalidAuditEvent."""
    _check_text("action", event.action, 100)
    if not _ACTION.fullmatch(event.action):
        raise InvalidAuditEvent(
            "action: must be lowercase dotted words such as 'auth.login' or 'patient.read'"
        )
    if event.outcome not in OUTCOMES:
        raise InvalidAuditEvent(f"outcome: must be one of {sorted(OUTCOMES)}")
    for name, uuid_value in (("actor_id", event.actor_id), ("clinic_id", event.clinic_id)):
        if uuid_value is not None and not isinstance(uuid_value, UUID):
            raise InvalidAuditEvent(f"{name}: must be a UUID")
    for name, limit in _TEXT_LIMITS.items():
        text = getattr(event, name)
        if text is not None:
            if not isinstance(text, str):
                raise InvalidAuditEvent(f"{name}: must be a string")
            _check_text(name, text, limit)
    if event.ip is not None:
        try:
            ipaddress.ip_address(event.ip)
        except ValueError:
            raise InvalidAuditEvent("ip: must be an IPv4 or IPv6 address") from None
    return replace(event, detail=_validate_detail(event.detail))


# The columns a caller fills, in the order of intake_params and intake_placeholders;
# occurred_at is the database's clock_timestamp() at insert.
INTAKE_COLUMNS: Final = (
    "actor_id",
    "actor_role",
    "clinic_id",
    "action",
    "object_type",
    "object_id",
    "ip",
    "outcome",
    "detail",
)
# detail goes in as JSON text so the result does not depend on the pool's jsonb codec.
_INTAKE_TYPES: Final = ("uuid", "text", "uuid", "text", "text", "text", "text", "text", "jsonb")


def intake_placeholders(first: int, **templates: str) -> str:
    """The typed placeholders ``$first, $first+1, ...`` for :data:`INTAKE_COLUMNS`.

    A keyword names a column and gives an SQL template in which ``{}`` stands
    for that column's placeholder, e.g. ``object_id="COALESCE({}, m.id::text)"``.
    """
    unknown = set(templates) - set(INTAKE_COLUMNS)
    if unknown:
        raise ValueError(f"not intake columns: {sorted(unknown)}")
    parts: list[str] = []
    for offset, (column, kind) in enumerate(zip(INTAKE_COLUMNS, _INTAKE_TYPES, strict=True)):
        cast = "::text::jsonb" if kind == "jsonb" else f"::{kind}"
        placeholder = f"${first + offset}{cast}"
        template = templates.get(column, "{}")
        if template.count("{}") != 1:
            raise ValueError(f"the template for {column} must contain {{}} exactly once")
        parts.append(template.replace("{}", placeholder))
    return ", ".join(parts)


def intake_params(event: AuditEvent) -> tuple[Any, ...]:
    """The values for :func:`intake_placeholders`, after :func:`validate_event`."""
    clean = validate_event(event)
    return (
        clean.actor_id,
        clean.actor_role,
        clean.clinic_id,
        clean.action,
        clean.object_type,
        clean.object_id,
        clean.ip,
        clean.outcome,
        _detail_json(clean.detail),
    )


_INSERT_INTAKE = (
    f"INSERT INTO audit_intake ({', '.join(INTAKE_COLUMNS)}) VALUES ({intake_placeholders(1)})"
)
_INSERT_INTAKE_MANY = f"""
INSERT INTO audit_intake ({", ".join(INTAKE_COLUMNS)})
SELECT a, b, c, d, e, f, g, h, i::jsonb
FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[]) WITH ORDINALITY AS t(a, b, c, d, e, f, g, h, i, n)
ORDER BY n
"""

# Qualified, so that the same list works in joins with audit_checkpoints.
_COLUMNS = ", ".join(
    f"audit_log.{column}"
    for column in (
        "seq",
        "occurred_at",
        "actor_id",
        "actor_role",
        "clinic_id",
        "action",
        "object_type",
        "object_id",
        "ip",
        "outcome",
        "detail::text AS detail",
        "prev_hash",
        "hash",
    )
)


def _uuid(value: Any) -> UUID | None:
    # asyncpg returns its own UUID subclass; store plain uuid.UUID values.
    return None if value is None else UUID(bytes=value.bytes)


def _to_record(row: asyncpg.Record) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        occurred_at=row["occurred_at"].astimezone(UTC),
        action=row["action"],
        outcome=row["outcome"],
        actor_id=_uuid(row["actor_id"]),
        actor_role=row["actor_role"],
        clinic_id=_uuid(row["clinic_id"]),
        object_type=row["object_type"],
        object_id=row["object_id"],
        ip=row["ip"],
        detail=json.loads(row["detail"]),
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
    )


async def read_head(conn: asyncpg.Connection) -> ChainHead | None:
    """The head row, or None when it is missing (which only tampering causes)."""
    row = await conn.fetchrow("SELECT seq, hash FROM audit_head")
    if row is None:
        return None
    return ChainHead(seq=row["seq"], hash=bytes(row["hash"]))


async def iter_records(
    conn: asyncpg.Connection, *, batch_size: int = 1000
) -> AsyncIterator[AuditRecord]:
    """Every chained row in ascending seq order, fetched ``batch_size`` rows at a time.

    Needs an open transaction on ``conn`` (server-side cursor); read the head in
    the same REPEATABLE READ transaction to compare the two consistently.
    """
    query = f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq"
    async for row in conn.cursor(query, prefetch=batch_size):
        yield _to_record(row)


def _checkpoint(row: asyncpg.Record, prefix: str = "") -> Checkpoint | None:
    if row[f"{prefix}hash"] is None:
        return None
    return Checkpoint(
        seq=row["seq"],
        hash=bytes(row[f"{prefix}hash"]),
        key_id=row[f"{prefix}key_id"],
        signature=bytes(row[f"{prefix}signature"]),
        signed_at=row[f"{prefix}signed_at"],
    )


_CHECKPOINT_COLUMNS = (
    "c.hash AS cp_hash, c.key_id AS cp_key_id, c.signature AS cp_signature, "
    "c.signed_at AS cp_signed_at"
)


async def iter_checkpointed(
    conn: asyncpg.Connection, *, batch_size: int = 1000
) -> AsyncIterator[tuple[AuditRecord, Checkpoint | None]]:
    """Like :func:`iter_records`, with the stored checkpoint at each row's seq, if any."""
    query = (
        f"SELECT {_COLUMNS}, {_CHECKPOINT_COLUMNS} FROM audit_log "
        "LEFT JOIN audit_checkpoints AS c USING (seq) ORDER BY seq"
    )
    async for row in conn.cursor(query, prefetch=batch_size):
        yield _to_record(row), _checkpoint(row, "cp_")


async def iter_orphan_checkpoints(conn: asyncpg.Connection) -> AsyncIterator[Checkpoint]:
    """Stored checkpoints whose seq has no row in the chain (needs an open transaction)."""
    query = (
        "SELECT c.seq, c.hash, c.key_id, c.signature, c.signed_at FROM audit_checkpoints AS c "
        "WHERE NOT EXISTS (SELECT 1 FROM audit_log AS l WHERE l.seq = c.seq) ORDER BY c.seq"
    )
    async for row in conn.cursor(query):
        checkpoint = _checkpoint(row)
        assert checkpoint is not None
        yield checkpoint


async def at_seqs(
    conn: asyncpg.Connection, seqs: Sequence[int]
) -> dict[int, tuple[bytes | None, Checkpoint | None]]:
    """For each seq: the chain's hash there and the stored checkpoint, None when absent."""
    rows = await conn.fetch(
        f"SELECT s.seq, l.hash AS chain_hash, {_CHECKPOINT_COLUMNS} "
        "FROM unnest($1::bigint[]) AS s(seq) "
        "LEFT JOIN audit_log AS l ON l.seq = s.seq "
        "LEFT JOIN audit_checkpoints AS c ON c.seq = s.seq",
        list(seqs),
    )
    return {
        row["seq"]: (
            None if row["chain_hash"] is None else bytes(row["chain_hash"]),
            _checkpoint(row, "cp_"),
        )
        for row in rows
    }


async def count_waiting(conn: asyncpg.Connection) -> int:
    """Events in the intake that the sequencer has not chained yet."""
    count: int = await conn.fetchval("SELECT count(*) FROM audit_intake")
    return count


class AuditTrail:
    """Writes events to the audit intake and lists a clinic's chained rows.

    Safe to call concurrently; writers never wait for each other.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, event: AuditEvent, conn: asyncpg.Connection | None = None) -> None:
        """Write ``event`` to the intake with one INSERT; it is chained shortly after.

        With ``conn`` (in the caller's open transaction) the event commits or
        rolls back with the caller's change; a single statement needs no
        savepoint. Without it, the event is committed on its own at once. Raises
        InvalidAuditEvent before touching the database when ``event`` is bad.
        """
        params = intake_params(event)
        if conn is not None:
            await conn.execute(_INSERT_INTAKE, *params)
        else:
            await self._pool.execute(_INSERT_INTAKE, *params)

    async def record_many(
        self, events: Sequence[AuditEvent], conn: asyncpg.Connection | None = None
    ) -> None:
        """Write several events with one INSERT, in the given order (see :meth:`record`).

        Validates them all first: one bad event writes none.
        """
        if not events:
            return
        columns: list[list[Any]] = [[] for _ in INTAKE_COLUMNS]
        for event in events:
            for column, value in zip(columns, intake_params(event), strict=True):
                column.append(value)
        if conn is not None:
            await conn.execute(_INSERT_INTAKE_MANY, *columns)
        else:
            await self._pool.execute(_INSERT_INTAKE_MANY, *columns)

    async def list_for_clinic(
        self, *, clinic_id: UUID, after: int | None = None, limit: int = 50
    ) -> list[AuditRecord]:
        """A clinic's chained rows with seq greater than ``after``, ascending, at most ``limit``.

        Events still in the intake (written in the last ~100 ms) are not listed yet.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise AuditError(f"limit: must be between 1 and {MAX_LIST_LIMIT}")
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM audit_log WHERE clinic_id = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3",
            clinic_id,
            0 if after is None else after,
            limit,
        )
        return [_to_record(row) for row in rows]
