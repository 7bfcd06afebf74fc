"""Writing and reading the audit trail in PostgreSQL (tables from migration 0002).

Writers are serialised: each append takes one transaction-scoped advisory lock
and the ``audit_head`` row lock, reads the head, inserts the next row and moves
the head. The locks are held until the surrounding transaction ends, so a
caller that records inside its own transaction blocks every other audit writer
until it commits or rolls back: keep such transactions short.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args
from uuid import UUID

import asyncpg

from teleconsult.audit.chain import (
    AuditRecord,
    ChainHead,
    DetailValue,
    compute_hash,
)
from teleconsult.core.errors import TeleconsultError
from teleconsult.core.identity import Principal

__all__ = [
    "AUDIT_LOCK_KEY",
    "AuditError",
    "AuditEvent",
    "AuditRecord",
    "AuditTrail",
    "InvalidAuditEvent",
    "Outcome",
    "iter_records",
    "read_head",
    "validate_event",
]

# Arbitrary constant shared by every teleconsult process: "tcaudit!" as bytes.
AUDIT_LOCK_KEY: Final = int.from_bytes(b"tcaudit!", "big")

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
        if not isinstance(key, str) or not _DETAIL_KEY.match(key):
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
    if not _ACTION.match(event.action):
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


_COLUMNS = (
    "seq, occurred_at, actor_id, actor_role, clinic_id, action, object_type, object_id, ip, "
    "outcome, detail::text AS detail, prev_hash, hash"
)
# detail goes in as text so the result does not depend on the pool's jsonb codec.
_INSERT = """
INSERT INTO audit_log (seq, occurred_at, actor_id, actor_role, clinic_id, action,
                       object_type, object_id, ip, outcome, detail, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb, $12, $13)
"""


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
    """Every row in ascending seq order, fetched ``batch_size`` rows at a time.

    Needs an open transaction on ``conn`` (server-side cursor); read the head in
    the same REPEATABLE READ transaction to compare the two consistently.
    """
    query = f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq"
    async for row in conn.cursor(query, prefetch=batch_size):
        yield _to_record(row)


class AuditTrail:
    """Appends events to the audit trail and lists a clinic's rows."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, event: AuditEvent, conn: asyncpg.Connection | None = None) -> int:
        """Append ``event``; return its seq.

        With ``conn`` in an open transaction, the row is written inside it (in a
        savepoint), so it commits or rolls back with the caller's change; the
        writer lock is then held until that transaction ends. Otherwise the row
        is committed in a transaction of its own. Raises
        InvalidAuditEvent before touching the database when ``event`` is bad.
        """
        clean = validate_event(event)
        if conn is not None:
            return (await _append(conn, clean)).seq
        async with self._pool.acquire() as own:
            return (await _append(own, clean)).seq

    async def list_for_clinic(
        self, *, clinic_id: UUID, after: int | None = None, limit: int = 50
    ) -> list[AuditRecord]:
        """A clinic's rows with seq greater than ``after``, ascending, at most ``limit``."""
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


async def _append(conn: asyncpg.Connection, event: AuditEvent) -> AuditRecord:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK_KEY)
        # FOR UPDATE as well: it also serialises writers that skip the advisory
        # lock, and makes a stale REPEATABLE READ snapshot fail instead of forking.
        head = await conn.fetchrow("SELECT seq, hash FROM audit_head FOR UPDATE")
        if head is None:
            raise AuditError("audit_head row is missing; the audit trail was tampered with")
        # Taken after the lock so that timestamps follow seq order.
        unhashed = AuditRecord(
            seq=head["seq"] + 1,
            occurred_at=datetime.now(UTC),
            action=event.action,
            outcome=event.outcome,
            actor_id=event.actor_id,
            actor_role=event.actor_role,
            clinic_id=event.clinic_id,
            object_type=event.object_type,
            object_id=event.object_id,
            ip=event.ip,
            detail=event.detail,
            prev_hash=bytes(head["hash"]),
            hash=b"",
        )
        record = replace(unhashed, hash=compute_hash(unhashed.prev_hash, unhashed))
        await conn.execute(
            _INSERT,
            record.seq,
            record.occurred_at,
            record.actor_id,
            record.actor_role,
            record.clinic_id,
            record.action,
            record.object_type,
            record.object_id,
            record.ip,
            record.outcome,
            _detail_json(record.detail),
            record.prev_hash,
            record.hash,
        )
        await conn.execute("UPDATE audit_head SET seq = $1, hash = $2", record.seq, record.hash)
    return record
